//! Where models run: a [`DeviceSpec`] as a user writes it (`cpu`, `cuda`, `cuda:1`, `metal`),
//! resolved to a candle `Device` by [`DeviceSpec::device`]. CUDA and Metal need capmatch built
//! with the `cuda` / `metal` feature; without it the error says so.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// A device as named on a command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
    /// An Apple GPU by ordinal (`metal` is `metal:0`).
    Metal(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?}: expected cpu, cuda, cuda:N or metal")]
    Parse(String),
    #[error("this build of capmatch has no {name} support: rebuild it with `--features {feature}`")]
    NotBuilt { name: &'static str, feature: &'static str },
    #[error("cannot open {spec}: {source}")]
    Unavailable { spec: DeviceSpec, source: candle_core::Error },
}

impl DeviceSpec {
    /// Opens the device.
    pub fn device(self) -> Result<Device, DeviceError> {
        let opened = match self {
            Self::Cpu => return Ok(Device::Cpu),
            Self::Cuda(_) if !cfg!(feature = "cuda") => return Err(DeviceError::NotBuilt { name: "CUDA", feature: "cuda" }),
            Self::Metal(_) if !cfg!(feature = "metal") => return Err(DeviceError::NotBuilt { name: "Metal", feature: "metal" }),
            Self::Cuda(n) => Device::new_cuda(n),
            Self::Metal(n) => Device::new_metal(n),
        };
        opened.map_err(|source| DeviceError::Unavailable { spec: self, source })
    }

    /// Whether this build can open such a device at all (it may still be absent).
    pub fn is_built(self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Cuda(_) => cfg!(feature = "cuda"),
            Self::Metal(_) => cfg!(feature = "metal"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, ordinal) = match lower.split_once(':') {
            Some((name, n)) => match n.parse::<usize>() {
                Ok(n) => (name, Some(n)),
                Err(_) => return Err(DeviceError::Parse(s.to_owned())),
            },
            None => (lower.as_str(), None),
        };
        match (name, ordinal) {
            ("cpu", None) => Ok(Self::Cpu),
            ("cuda", n) => Ok(Self::Cuda(n.unwrap_or(0))),
            ("metal", n) => Ok(Self::Metal(n.unwrap_or(0))),
            _ => Err(DeviceError::Parse(s.to_owned())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_users_write() {
        for (text, spec) in [
            ("cpu", DeviceSpec::Cpu),
            ("CPU", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:0", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
            (" metal ", DeviceSpec::Metal(0)),
            ("metal:1", DeviceSpec::Metal(1)),
        ] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), spec, "{text:?}");
        }
        for bad in ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "tpu:1"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(err.contains("expected cpu, cuda, cuda:N or metal"), "{bad:?}: {err}");
        }
        for spec in [DeviceSpec::Cpu, DeviceSpec::Cuda(2), DeviceSpec::Metal(0)] {
            assert_eq!(spec.to_string().parse::<DeviceSpec>().unwrap(), spec);
        }
    }

    #[test]
    fn a_device_this_build_lacks_names_the_feature() {
        assert!(matches!(DeviceSpec::Cpu.device(), Ok(Device::Cpu)));
        if !cfg!(feature = "cuda") {
            let err = DeviceSpec::Cuda(0).device().unwrap_err().to_string();
            assert!(err.contains("no CUDA support") && err.contains("--features cuda"), "{err}");
            assert!(!DeviceSpec::Cuda(0).is_built());
        }
        if !cfg!(feature = "metal") {
            let err = DeviceSpec::Metal(0).device().unwrap_err().to_string();
            assert!(err.contains("no Metal support") && err.contains("--features metal"), "{err}");
        }
    }
}
