//! Benchmark protocols (domains, classes and k of Office-Home and DomainNet as UCDIR and the
//! CDIR papers after it evaluate them) and the retrieval modes of the ablation.

use serde::{Deserialize, Serialize};

/// The DomainNet class subset file, with its source in the header comments.
pub const DOMAINNET_UCDIR_CLASSES_FILE: &str = include_str!("../data/domainnet_ucdir_classes.txt");

/// Office-Home's four domains, as its folders are named.
pub const OFFICE_HOME_DOMAINS: [&str; 4] = ["Art", "Clipart", "Product", "Real_World"];
/// UCDIR's k for Office-Home (`--prec-nums 1,5,15`, its default).
pub const OFFICE_HOME_KS: [usize; 3] = [1, 5, 15];
/// DomainNet's six domains, as its folders are named.
pub const DOMAINNET_DOMAINS: [&str; 6] = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"];
/// UCDIR's k for DomainNet (`scripts/domainnet.sh`: `--prec-nums 50,100,200`).
pub const DOMAINNET_KS: [usize; 3] = [50, 100, 200];

/// Parses a class list: one class per line; blank lines and `#` comments are skipped.
pub fn parse_class_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The 7 DomainNet classes of UCDIR's protocol.
pub fn domainnet_ucdir_classes() -> Vec<String> {
    parse_class_list(DOMAINNET_UCDIR_CLASSES_FILE)
}

/// What a benchmark fixes: its domains, its classes (all when `None`) and its k.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    /// `office-home`, `domainnet`, or `custom`.
    pub name: String,
    /// Domains in order; empty means every domain folder of the dataset.
    pub domains: Vec<String>,
    /// Classes; `None` means every class folder.
    pub classes: Option<Vec<String>>,
    pub ks: Vec<usize>,
}

impl Protocol {
    pub fn office_home() -> Self {
        Self {
            name: "office-home".into(),
            domains: OFFICE_HOME_DOMAINS.iter().map(|s| s.to_string()).collect(),
            classes: None,
            ks: OFFICE_HOME_KS.to_vec(),
        }
    }

    pub fn domainnet() -> Self {
        Self {
            name: "domainnet".into(),
            domains: DOMAINNET_DOMAINS.iter().map(|s| s.to_string()).collect(),
            classes: Some(domainnet_ucdir_classes()),
            ks: DOMAINNET_KS.to_vec(),
        }
    }

    /// No fixed domains or classes; k = 1, 5, 15 unless overridden.
    pub fn custom() -> Self {
        Self { name: "custom".into(), domains: Vec::new(), classes: None, ks: OFFICE_HOME_KS.to_vec() }
    }

    /// `office-home` (also `officehome`, `office_home`) or `domainnet`, case-insensitive.
    pub fn by_name(name: &str) -> Result<Self, UnknownName> {
        match name.to_ascii_lowercase().replace('_', "-").as_str() {
            "office-home" | "officehome" => Ok(Self::office_home()),
            "domainnet" | "domain-net" => Ok(Self::domainnet()),
            "custom" => Ok(Self::custom()),
            _ => Err(UnknownName { kind: "protocol", name: name.into(), expected: "office-home, domainnet" }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?} (expected one of: {expected})")]
pub struct UnknownName {
    pub kind: &'static str,
    pub name: String,
    pub expected: &'static str,
}

/// The retrieval modes (defined once, in `capmatch-retrieval`).
pub use capmatch_retrieval::Mode;

/// The modes of the evaluation's ablation, in report order (`text` is not one: the queries
/// are images).
pub const EVAL_MODES: [Mode; 4] = [Mode::Caption, Mode::Image, Mode::Fused, Mode::CaptionText];

/// Parses a comma-separated list of evaluation modes (`caption,image`); empty input means
/// all of [`EVAL_MODES`]. Duplicates are dropped, order kept.
pub fn parse_modes<S: AsRef<str>>(items: &[S]) -> Result<Vec<Mode>, UnknownName> {
    let unknown = |name: &str| UnknownName { kind: "mode", name: name.into(), expected: "caption, image, fused, caption-text" };
    let mut out = Vec::new();
    for item in items {
        for part in item.as_ref().split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mode: Mode = part.parse().map_err(|_| unknown(part))?;
            if !EVAL_MODES.contains(&mode) {
                return Err(unknown(part));
            }
            if !out.contains(&mode) {
                out.push(mode);
            }
        }
    }
    if out.is_empty() {
        out = EVAL_MODES.to_vec();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domainnet_subset_has_seven_classes() {
        let classes = domainnet_ucdir_classes();
        assert_eq!(classes, ["bird", "feather", "teapot", "tiger", "whale", "windmill", "zebra"]);
        let p = Protocol::domainnet();
        assert_eq!(p.ks, [50, 100, 200]);
        assert_eq!(p.domains.len(), 6);
        assert_eq!(p.classes.as_deref(), Some(&classes[..]));
    }

    #[test]
    fn protocols_by_name() {
        assert_eq!(Protocol::by_name("Office-Home").unwrap(), Protocol::office_home());
        assert_eq!(Protocol::by_name("office_home").unwrap().ks, [1, 5, 15]);
        assert_eq!(Protocol::by_name("domainnet").unwrap().name, "domainnet");
        assert!(Protocol::by_name("pacs").is_err());
    }

    #[test]
    fn class_lists_skip_comments_and_blanks() {
        assert_eq!(parse_class_list("# c\n\n a \nb\n  # x\n"), ["a", "b"]);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(parse_modes::<&str>(&[]).unwrap(), EVAL_MODES);
        assert_eq!(parse_modes(&["caption-text,image", "image"]).unwrap(), [Mode::CaptionText, Mode::Image]);
        assert!(parse_modes(&["text"]).is_err());
        for m in EVAL_MODES {
            assert_eq!(m.as_str().parse::<Mode>().unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
    }
}
