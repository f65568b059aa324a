//! `capmatch info` (being written).

use crate::InfoArgs;

pub fn run(_args: InfoArgs) -> anyhow::Result<()> {
    anyhow::bail!("`capmatch info` is not implemented yet")
}
