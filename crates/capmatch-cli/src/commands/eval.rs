//! `capmatch eval` (being written).

use crate::EvalArgs;

pub fn run(_args: EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("`capmatch eval` is not implemented yet")
}
