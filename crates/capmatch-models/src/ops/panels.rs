//! Right-hand operands packed for the microkernels: a weight matrix `w (n, k)` (as stored by
//! `nn.Linear`, one row per output column) as panels of `group` output columns, each panel
//! k-major: `data[g][kk][c] = w[g·group + c][kk]`, zero past n. A microkernel then reads
//! one contiguous row of `group` values per step of k.

use rayon::prelude::*;

/// `w (n, k)` as panels of `group` columns (see the module documentation).
#[derive(Debug, Clone, Default)]
pub(crate) struct Panels<T> {
    data: Vec<T>,
    n: usize,
    k: usize,
    group: usize,
}

impl<T: Copy + Default + Send + Sync> Panels<T> {
    /// Packs `value(c, kk) = w[c][kk]` for `c < n`, `kk < k`, panels in parallel (weights
    /// at load).
    pub fn pack(n: usize, k: usize, group: usize, value: impl Fn(usize, usize) -> T + Sync) -> Self {
        let mut p = Self::default();
        p.reset(n, k, group);
        if k > 0 {
            p.data.par_chunks_mut(k * group).enumerate().for_each(|(g, panel)| {
                // One output column at a time, so each weight row is read in order.
                for c in 0..group.min(n - g * group) {
                    for kk in 0..k {
                        panel[kk * group + c] = value(g * group + c, kk);
                    }
                }
            });
        }
        p
    }

    /// Packs into this value's buffer (reused between calls), on this thread, from the rows
    /// of `w`: `row(c)` holds `w[c][..k]` (attention's keys).
    pub fn repack_from_rows<'w>(&mut self, n: usize, k: usize, group: usize, row: impl Fn(usize) -> &'w [T])
    where
        T: 'w,
    {
        self.reset(n, k, group);
        for (g, panel) in self.data.chunks_mut(k * group.max(1)).enumerate() {
            for c in 0..group.min(n - g * group) {
                for (kk, &v) in row(g * group + c)[..k].iter().enumerate() {
                    panel[kk * group + c] = v;
                }
            }
        }
    }

    /// Packs into this value's buffer, on this thread, from the columns of `w`: `step(kk)`
    /// holds `w[..n][kk]` (attention's values, whose rows are the steps of k).
    pub fn repack_from_steps<'w>(&mut self, n: usize, k: usize, group: usize, step: impl Fn(usize) -> &'w [T])
    where
        T: 'w,
    {
        self.reset(n, k, group);
        for (g, panel) in self.data.chunks_mut(k * group.max(1)).enumerate() {
            let cols = group.min(n - g * group);
            for kk in 0..k {
                panel[kk * group..kk * group + cols].copy_from_slice(&step(kk)[g * group..g * group + cols]);
            }
        }
    }

    /// Zeroed panels for an (n, k) operand.
    fn reset(&mut self, n: usize, k: usize, group: usize) {
        assert!(group > 0);
        self.data.clear();
        self.data.resize(n.div_ceil(group) * k * group, T::default());
        (self.n, self.k, self.group) = (n, k, group);
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Steps of the reduction.
    pub fn k(&self) -> usize {
        self.k
    }

    pub fn group(&self) -> usize {
        self.group
    }

    /// The `k` values of output column `c` (row `c` of the packed weight), in order.
    pub fn column(&self, c: usize) -> impl Iterator<Item = T> + '_ {
        assert!(c < self.n, "column {c} of {}", self.n);
        let (g, lane) = (c / self.group, c % self.group);
        let panel = &self.data[g * self.k * self.group..(g + 1) * self.k * self.group];
        panel.iter().skip(lane).step_by(self.group).copied()
    }

    /// Panel `g` from step `k0` of k on.
    pub fn block(&self, g: usize, k0: usize) -> &[T] {
        &self.data[g * self.k * self.group + k0 * self.group..]
    }
}

/// A value of a packed right-hand operand, as the kernel reads it.
pub(crate) trait PanelValue: Copy + Default + Send + Sync {
    fn widen(self) -> f32;
}

impl PanelValue for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

/// The bits of a bf16 value (a vectorisable shift widens it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Bf16Bits(pub u16);

impl PanelValue for Bf16Bits {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}
