//! The arena's physics: bodies that fall and bounce. Other modules call it; the host does not.

use arena_rules::{FLOOR, GRAVITY};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Physics {
    /// Height and vertical speed of each body.
    bodies: Vec<(f32, f32)>,
}

#[hotreload::hot_module(version = 1)]
impl Physics {
    /// Adds a body at `height`; returns its number.
    pub fn spawn(&mut self, height: f32) -> u32 {
        self.bodies.push((height, 0.0));
        self.bodies.len() as u32 - 1
    }

    /// Gives body `body` an upward kick.
    pub fn push(&mut self, body: u32, speed: f32) {
        if let Some((_, v)) = self.bodies.get_mut(body as usize) {
            *v += speed;
        }
    }

    /// Advances the world by `dt` seconds: bodies fall, and stop at the floor.
    pub fn step(&mut self, dt: f32) {
        for (height, speed) in &mut self.bodies {
            *speed -= GRAVITY * dt;
            *height += *speed * dt;
            if *height < FLOOR {
                *height = FLOOR;
                *speed = 0.0;
            }
        }
    }

    /// The bodies' heights.
    pub fn heights(&self) -> Vec<f32> {
        self.bodies.iter().map(|(height, _)| *height).collect()
    }
}
