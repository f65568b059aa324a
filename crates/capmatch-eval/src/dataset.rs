//! Dataset layout `ROOT/<domain>/<class>/<image>`: walking it, choosing domains and classes,
//! and reading an image's domain and class back from its path.
//!
//! Folders and files whose names start with `.` are skipped (the default index
//! `ROOT/.capmatch.db` lives beside the domains). Images are recognised by extension; files
//! nested deeper inside a class folder belong to that class. Everything is sorted by name, so
//! the order (and with it the tie rule of the ranking) is deterministic.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};


#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("dataset root {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("domain {name:?} not found under {root} (found: {found})")]
    UnknownDomain { name: String, root: PathBuf, found: String },
    #[error("class {name:?} is in none of the selected domains")]
    UnknownClass { name: String },
    #[error("no images found under {0} for the selected domains and classes")]
    Empty(PathBuf),
}

/// Which domains and classes to take; empty means all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub domains: Vec<String>,
    pub classes: Vec<String>,
}

/// One image of the dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetImage {
    pub path: PathBuf,
    pub domain: String,
    pub class: String,
}

/// The images of a dataset, grouped by domain in the selection's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub root: PathBuf,
    /// `(domain, its folder)`, in order.
    pub domains: Vec<(String, PathBuf)>,
    /// Sorted, deduplicated classes that occur in the selected domains.
    pub classes: Vec<String>,
    /// Images, domain by domain, each domain sorted by class then path.
    pub images: Vec<DatasetImage>,
}

impl Dataset {
    pub fn images_of<'a>(&'a self, domain: &'a str) -> impl Iterator<Item = &'a DatasetImage> + 'a {
        self.images.iter().filter(move |i| i.domain == domain)
    }
}

/// Images are the files `capmatch index` would index: one extension list for both.
pub use capmatch_core::image_io::is_image_path;

fn hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// Sorted sub-folders (not hidden) of `dir`, by name.
fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, DatasetError> {
    let io = |source| DatasetError::Io { path: dir.to_path_buf(), source };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if hidden(&name) || !path.is_dir() {
            continue;
        }
        out.push((name, path));
    }
    out.sort();
    Ok(out)
}

/// Image files under `dir` (recursively), sorted by path.
fn image_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DatasetError> {
    let io = |source| DatasetError::Io { path: dir.to_path_buf(), source };
    let mut entries: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_name().to_str().map(hidden).unwrap_or(true) {
            continue;
        }
        entries.push(entry.path());
    }
    entries.sort();
    for path in entries {
        if path.is_dir() {
            image_files(&path, out)?;
        } else if is_image_path(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The domain folders directly under `root`, sorted.
pub fn list_domains(root: &Path) -> Result<Vec<String>, DatasetError> {
    if !root.is_dir() {
        return Err(DatasetError::NotADirectory(root.to_path_buf()));
    }
    Ok(subdirs(root)?.into_iter().map(|(n, _)| n).collect())
}

/// Walks `ROOT/<domain>/<class>/<image>`. Domains are taken in the selection's order (or
/// sorted when it names none); a named domain that is missing is an error, and so is a named
/// class found in none of the selected domains (a class missing from some domains is fine:
/// its queries simply have no relevant gallery image there).
pub fn walk(root: &Path, selection: &Selection) -> Result<Dataset, DatasetError> {
    let available = list_domains(root)?;
    let domains: Vec<String> = if selection.domains.is_empty() {
        available.clone()
    } else {
        let mut chosen = Vec::new();
        for name in &selection.domains {
            if !available.contains(name) {
                return Err(DatasetError::UnknownDomain {
                    name: name.clone(),
                    root: root.to_path_buf(),
                    found: available.join(", "),
                });
            }
            if !chosen.contains(name) {
                chosen.push(name.clone());
            }
        }
        chosen
    };
    let wanted: Option<BTreeSet<&str>> =
        (!selection.classes.is_empty()).then(|| selection.classes.iter().map(String::as_str).collect());

    let mut images = Vec::new();
    let mut classes = BTreeSet::new();
    let mut domain_dirs = Vec::new();
    for domain in &domains {
        let dir = root.join(domain);
        for (class, class_dir) in subdirs(&dir)? {
            if let Some(w) = &wanted {
                if !w.contains(class.as_str()) {
                    continue;
                }
            }
            let mut files = Vec::new();
            image_files(&class_dir, &mut files)?;
            if !files.is_empty() {
                classes.insert(class.clone());
            }
            images.extend(files.into_iter().map(|path| DatasetImage { path, domain: domain.clone(), class: class.clone() }));
        }
        domain_dirs.push((domain.clone(), dir));
    }
    if let Some(w) = &wanted {
        for name in w {
            if !classes.contains(*name) {
                return Err(DatasetError::UnknownClass { name: name.to_string() });
            }
        }
    }
    if images.is_empty() {
        return Err(DatasetError::Empty(root.to_path_buf()));
    }
    Ok(Dataset { root: root.to_path_buf(), domains: domain_dirs, classes: classes.into_iter().collect(), images })
}

/// `(domain, class)` of an image path under `root`: the first two components of the path
/// relative to `root`. `None` when the path is not under `root` or too shallow.
/// Both paths are compared as given (make them both absolute, or both relative, first).
pub fn domain_and_class(root: &Path, path: &Path) -> Option<(String, String)> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts = rel.components().filter_map(|c| match c {
        Component::Normal(s) => s.to_str(),
        _ => None,
    });
    let domain = parts.next()?;
    let class = parts.next()?;
    // There must be a file below the class folder.
    parts.next()?;
    Some((domain.to_string(), class.to_string()))
}

/// Reads a classes file: one class per line, blank lines and `#` comments skipped.
pub fn read_classes_file(path: &Path) -> Result<Vec<String>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io { path: path.to_path_buf(), source })?;
    Ok(crate::protocol::parse_class_list(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        touch(&r.join("Art/apple/1.jpg"));
        touch(&r.join("Art/apple/0.PNG"));
        touch(&r.join("Art/apple/notes.txt"));
        touch(&r.join("Art/lemon/a.png"));
        touch(&r.join("Art/.hidden/a.png"));
        touch(&r.join("Clipart/apple/sub/x.webp"));
        touch(&r.join("Clipart/pear/y.jpeg"));
        touch(&r.join("Clipart/empty/readme.md"));
        touch(&r.join(".capmatch.db"));
        std::fs::create_dir_all(r.join(".cache/x/y")).unwrap();
        dir
    }

    #[test]
    fn walks_all_domains_and_classes_sorted() {
        let dir = fixture();
        let ds = walk(dir.path(), &Selection::default()).unwrap();
        let names: Vec<_> = ds.domains.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Art", "Clipart"]);
        assert_eq!(ds.classes, ["apple", "lemon", "pear"]);
        let rel: Vec<String> = ds
            .images
            .iter()
            .map(|i| i.path.strip_prefix(dir.path()).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(rel, ["Art/apple/0.PNG", "Art/apple/1.jpg", "Art/lemon/a.png", "Clipart/apple/sub/x.webp", "Clipart/pear/y.jpeg"]);
        assert_eq!(ds.images[3].class, "apple");
        assert_eq!(ds.images[3].domain, "Clipart");
        assert_eq!(ds.images_of("Art").count(), 3);
    }

    #[test]
    fn selects_domains_in_given_order_and_classes() {
        let dir = fixture();
        let sel = Selection { domains: vec!["Clipart".into(), "Art".into()], classes: vec!["apple".into()] };
        let ds = walk(dir.path(), &sel).unwrap();
        assert_eq!(ds.domains[0].0, "Clipart");
        assert_eq!(ds.classes, ["apple"]);
        assert_eq!(ds.images.len(), 3);
        assert!(ds.images.iter().all(|i| i.class == "apple"));
        assert_eq!(ds.images[0].domain, "Clipart");
    }

    #[test]
    fn unknown_domain_or_class_is_an_error() {
        let dir = fixture();
        let err = walk(dir.path(), &Selection { domains: vec!["Photo".into()], classes: vec![] }).unwrap_err();
        assert!(matches!(err, DatasetError::UnknownDomain { .. }), "{err}");
        assert!(err.to_string().contains("Art, Clipart"));
        let err = walk(dir.path(), &Selection { domains: vec![], classes: vec!["kiwi".into()] }).unwrap_err();
        assert!(matches!(err, DatasetError::UnknownClass { .. }));
        // A class present in only one domain is fine.
        let ds = walk(dir.path(), &Selection { domains: vec![], classes: vec!["pear".into()] }).unwrap();
        assert_eq!(ds.images.len(), 1);
        assert!(matches!(walk(&dir.path().join("nope"), &Selection::default()), Err(DatasetError::NotADirectory(_))));
    }

    #[test]
    fn class_from_path() {
        let root = Path::new("/data/oh");
        assert_eq!(
            domain_and_class(root, Path::new("/data/oh/Art/apple/1.jpg")),
            Some(("Art".into(), "apple".into()))
        );
        assert_eq!(
            domain_and_class(root, Path::new("/data/oh/Art/apple/deep/1.jpg")),
            Some(("Art".into(), "apple".into()))
        );
        assert_eq!(domain_and_class(root, Path::new("/data/oh/Art/1.jpg")), None);
        assert_eq!(domain_and_class(root, Path::new("/elsewhere/Art/apple/1.jpg")), None);
    }

    #[test]
    fn classes_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt");
        std::fs::write(&p, "# header\napple\n\n lemon \n").unwrap();
        assert_eq!(read_classes_file(&p).unwrap(), ["apple", "lemon"]);
    }
}
