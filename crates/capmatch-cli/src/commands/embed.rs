//! `capmatch embed` (being written).

use crate::EmbedArgs;

pub fn run(_args: EmbedArgs) -> anyhow::Result<()> {
    anyhow::bail!("`capmatch embed` is not implemented yet")
}
