//! How a model is loaded: the dtype its weights are held in, the device it runs on and the
//! kernels that run it. One struct for [`crate::embedder::ClipEmbedder`] and
//! [`crate::captioner::Captioner`].

use candle_core::{DType, Device};
use capmatch_models::Kernels;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// F32, BF16 or F16: the weights are converted to it at load (on the CPU activations are
    /// f32 whatever it is; see `capmatch_models::layers`).
    pub dtype: DType,
    pub device: Device,
    /// [`Kernels::Fused`] (the default) or [`Kernels::Candle`], which runs on the CPU the
    /// code path a GPU runs.
    pub kernels: Kernels,
}

impl LoadOptions {
    /// `dtype` on the CPU with the fused kernels.
    pub fn new(dtype: DType) -> Self {
        Self { dtype, device: Device::Cpu, kernels: Kernels::default() }
    }

    pub fn on(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }
}

impl Default for LoadOptions {
    /// f32 on the CPU with the fused kernels.
    fn default() -> Self {
        Self::new(DType::F32)
    }
}
