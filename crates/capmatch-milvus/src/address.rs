//! Where a Milvus store is: `milvus://HOST:PORT/COLLECTION` (or `.../DATABASE/COLLECTION`),
//! with its credentials.

use std::fmt;
use std::path::Path;

use capmatch_store::StoreError;

/// The environment variable holding the token (`user:password` or an API key), when no
/// token file is given.
pub const TOKEN_ENV: &str = "CAPMATCH_MILVUS_TOKEN";
/// The environment variable naming the database, when the address does not.
pub const DATABASE_ENV: &str = "CAPMATCH_MILVUS_DB";

/// A parsed `milvus://` store address.
#[derive(Clone, PartialEq, Eq)]
pub struct MilvusAddress {
    pub host: String,
    pub port: u16,
    /// Empty: the server's default database.
    pub database: String,
    /// The name the collections of this gallery start with.
    pub collection: String,
    /// Sent as the `authorization` header; never printed.
    pub token: Option<String>,
}

impl fmt::Debug for MilvusAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for MilvusAddress {
    /// The address without the token, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "milvus://{}:{}/", self.host, self.port)?;
        if !self.database.is_empty() {
            write!(f, "{}/", self.database)?;
        }
        write!(f, "{}", self.collection)
    }
}

impl MilvusAddress {
    /// Whether `store` names a Milvus store (rather than a local path).
    pub fn is_milvus(store: &str) -> bool {
        store.starts_with("milvus://")
    }

    /// Parses `milvus://HOST:PORT/[DATABASE/]COLLECTION`. The token comes from `token_file`
    /// when given, else from [`TOKEN_ENV`]; the database, when the address has none, from
    /// [`DATABASE_ENV`].
    pub fn parse(store: &str, token_file: Option<&Path>) -> Result<Self, StoreError> {
        let bad = |why: &str| {
            StoreError::InvalidInput(format!("{store:?} is not a Milvus address ({why}); expected milvus://HOST:PORT/COLLECTION"))
        };
        let rest = store.strip_prefix("milvus://").ok_or_else(|| bad("no milvus:// prefix"))?;
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no collection"))?;
        let (host, port) = authority.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let (database, collection) = match parts.as_slice() {
            [c] => (std::env::var(DATABASE_ENV).unwrap_or_default(), c.to_string()),
            [d, c] => (d.to_string(), c.to_string()),
            _ => return Err(bad("the path must be COLLECTION or DATABASE/COLLECTION")),
        };
        for name in [&database, &collection] {
            if !valid_name(name) && !name.is_empty() {
                return Err(bad(&format!("{name:?} is not a Milvus name: letters, digits and _, not starting with a digit")));
            }
        }
        if collection.is_empty() {
            return Err(bad("no collection"));
        }
        // Room for the suffixes of the three collections (Milvus allows 255 characters).
        if collection.len() > 200 {
            return Err(bad("the collection name is longer than 200 characters"));
        }
        let token = match token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| StoreError::io(path, e))?;
                Some(text.trim().to_owned()).filter(|t| !t.is_empty())
            }
            None => std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
        };
        Ok(Self { host: host.to_owned(), port, database, collection, token })
    }

    /// The gRPC endpoint.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_without_the_token() {
        let a = MilvusAddress::parse("milvus://127.0.0.1:19530/gallery", None).unwrap();
        assert_eq!((a.host.as_str(), a.port, a.collection.as_str()), ("127.0.0.1", 19530, "gallery"));
        assert_eq!(a.endpoint(), "http://127.0.0.1:19530");
        let b = MilvusAddress::parse("milvus://milvus.example:443/prod/gallery_v2", None).unwrap();
        assert_eq!((b.database.as_str(), b.collection.as_str()), ("prod", "gallery_v2"));
        assert_eq!(b.to_string(), "milvus://milvus.example:443/prod/gallery_v2");
        let dir = std::env::temp_dir().join(format!("capmatch-token-{}", std::process::id()));
        std::fs::write(&dir, "root:Milvus\n").unwrap();
        let c = MilvusAddress::parse("milvus://h:1/g", Some(&dir)).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(c.token.as_deref(), Some("root:Milvus"));
        assert!(!format!("{c:?}").contains("Milvus\""), "the token is never printed");
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        for (bad, why) in [
            ("http://h:1/g", "prefix"),
            ("milvus://h/g", "port"),
            ("milvus://h:x/g", "number"),
            ("milvus://h:1", "collection"),
            ("milvus://h:1/9g", "Milvus name"),
            ("milvus://h:1/a/b/c", "path"),
        ] {
            let err = MilvusAddress::parse(bad, None).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
