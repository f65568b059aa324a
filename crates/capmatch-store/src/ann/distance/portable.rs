//! The reference kernel: one f32 sum, element by element.

use super::bf16_to_f32;

pub(super) fn ip_distance(a: &[u16], b: &[u16]) -> f32 {
    assert_eq!(a.len(), b.len());
    1.0 - a.iter().zip(b).map(|(&x, &y)| bf16_to_f32(x) * bf16_to_f32(y)).sum::<f32>()
}
