//! The arena's director: runs a frame by asking `brain` to decide and `physics` to step. The
//! host calls it.

use arena_brain::Brain;
use arena_physics::Physics;
use hotreload::hot_fn;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Director {
    frames: u64,
}

#[hotreload::hot_module(version = 1, uses = [arena_physics::Physics, arena_brain::Brain])]
impl Director {
    /// Sets the scene: `count` bodies at increasing heights.
    pub fn setup(&mut self, count: u32) -> Result<(), String> {
        let physics = Self::import::<Physics>();
        for i in 0..count {
            hot_fn!(physics.spawn(1.0 + i as f32)).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// One frame of `dt` seconds: a decision, a step. Returns the frame's number, the body
    /// kicked and the heights after the step.
    pub fn frame(&mut self, dt: f32) -> Result<(u64, u32, Vec<f32>), String> {
        let kicked = hot_fn!(Self::import::<Brain>().decide()).map_err(|e| e.to_string())??;
        let physics = Self::import::<Physics>();
        hot_fn!(physics.step(dt)).map_err(|e| e.to_string())?;
        let heights = hot_fn!(physics.heights()).map_err(|e| e.to_string())?;
        self.frames += 1;
        Ok((self.frames, kicked, heights))
    }
}
