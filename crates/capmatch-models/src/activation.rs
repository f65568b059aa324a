//! The activation functions of the models' feed-forward blocks, one enum for every model
//! and for the CPU kernels ([`crate::ops`]), read from a config's `hidden_act` (CLIP, BLIP,
//! BLIP-2's vision tower and Q-Former), `activation_function` (OPT) or the activation part of
//! `feed_forward_proj` (T5).

use candle_core::{Result, Tensor};
use serde::Deserialize;

/// transformers' `ACT2FN`, for the names the supported checkpoints use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum HiddenAct {
    /// `x * sigmoid(1.702 x)`: OpenAI's CLIP checkpoints (CLIP's default).
    #[default]
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact (erf) GELU: OpenCLIP ports, BLIP, BLIP-2.
    #[serde(rename = "gelu", alias = "gelu_python")]
    Gelu,
    /// GELU's tanh approximation (Flan-T5's `gated-gelu`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// OPT.
    #[serde(rename = "relu")]
    Relu,
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

impl HiddenAct {
    /// From an activation name as configs spell it; `None` if capmatch does not know it.
    pub fn from_name(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }

    /// From an activation name, with an error that names it.
    pub fn parse(name: &str) -> Result<Self> {
        Self::from_name(name).ok_or_else(|| candle_core::Error::Msg(format!("unsupported activation {name:?}")))
    }

    /// The activation as candle ops (any device, any dtype).
    pub fn forward(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
            Self::Relu => xs.relu(),
            Self::Silu => xs.silu(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_supported_configs_parses() {
        for (name, act) in [
            ("quick_gelu", HiddenAct::QuickGelu),
            ("gelu", HiddenAct::Gelu),
            ("gelu_python", HiddenAct::Gelu),
            ("gelu_new", HiddenAct::GeluTanh),
            ("gelu_pytorch_tanh", HiddenAct::GeluTanh),
            ("gelu_fast", HiddenAct::GeluTanh),
            ("relu", HiddenAct::Relu),
            ("silu", HiddenAct::Silu),
            ("swish", HiddenAct::Silu),
        ] {
            assert_eq!(HiddenAct::from_name(name), Some(act), "{name}");
            assert_eq!(serde_json::from_str::<HiddenAct>(&format!("\"{name}\"")).unwrap(), act);
        }
        assert_eq!(HiddenAct::from_name("mish"), None);
        assert!(HiddenAct::parse("mish").unwrap_err().to_string().contains("mish"));
    }

    #[test]
    fn quick_gelu_values() {
        let x = Tensor::new(&[-2f32, 0.0, 1.0, 3.0], &candle_core::Device::Cpu).unwrap();
        let y = HiddenAct::QuickGelu.forward(&x).unwrap().to_vec1::<f32>().unwrap();
        for (xi, yi) in [-2f32, 0.0, 1.0, 3.0].iter().zip(y) {
            let want = xi / (1.0 + (-1.702 * xi).exp());
            assert!((want - yi).abs() < 1e-6, "{xi}: {yi} vs {want}");
        }
    }
}
