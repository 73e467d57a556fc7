//! `synguard top`: the live view.

use std::time::Duration;

use super::State;

pub fn top(_state: &State, _every: Duration) -> anyhow::Result<()> {
    anyhow::bail!("`synguard top` is not built yet")
}
