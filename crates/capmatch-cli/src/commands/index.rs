//! `capmatch index` (being written).

use crate::IndexArgs;

pub fn run(_args: IndexArgs) -> anyhow::Result<()> {
    anyhow::bail!("`capmatch index` is not implemented yet")
}
