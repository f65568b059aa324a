//! `capmatch caption` (being written).

use crate::CaptionArgs;

pub fn run(_args: CaptionArgs) -> anyhow::Result<()> {
    anyhow::bail!("`capmatch caption` is not implemented yet")
}
