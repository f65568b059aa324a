//! `capmatch search` (being written).

use crate::SearchArgs;

pub fn run(_args: SearchArgs) -> anyhow::Result<()> {
    anyhow::bail!("`capmatch search` is not implemented yet")
}
