//! The arena's brain: each decision kicks the lowest body up. It calls `physics`.

use arena_physics::Physics;
use hotreload::hot_fn;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Brain {
    decisions: u64,
}

#[hotreload::hot_module(version = 1, uses = [arena_physics::Physics])]
impl Brain {
    /// Kicks the lowest body; returns its number.
    pub fn decide(&mut self) -> Result<u32, String> {
        let physics = Self::import::<Physics>();
        let heights = hot_fn!(physics.heights()).map_err(|e| e.to_string())?;
        let lowest = (0..heights.len())
            .min_by(|&a, &b| heights[a].total_cmp(&heights[b]))
            .ok_or("no bodies")? as u32;
        hot_fn!(physics.push(lowest, 4.0)).map_err(|e| e.to_string())?; // KICK
        self.decisions += 1;
        Ok(lowest)
    }

    /// How many decisions it made.
    pub fn decisions(&self) -> u64 {
        self.decisions
    }
}
