//! The logic of a small game, as a hot module: a score and a list of entities that move.
//!
//! Edit `tick` while the demo runs and the new build takes over with the score and every
//! entity where they were.

use abi_stable::StableAbi;
use hotreload::{Rehome, hot_module};
use serde::{Deserialize, Serialize};

/// A thing in the world.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub id: u32,
    pub x: f32,
    pub speed: f32,
}

/// What the host sees of the game after each tick; crosses the boundary as is.
#[repr(C)]
#[derive(StableAbi, Rehome, Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub tick: u64,
    pub score: i64,
    pub entities: u32,
    pub rightmost: f32,
}

/// The module's state, carried from version to version.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct GameLogic {
    ticks: u64,
    score: i64,
    entities: Vec<Entity>,
}

#[hot_module(version = 1)]
impl GameLogic {
    /// Adds an entity moving at `speed` units per second; returns its id.
    pub fn spawn(&mut self, speed: f32) -> u32 {
        let id = self.entities.len() as u32 + 1;
        self.entities.push(Entity { id, x: 0.0, speed });
        id
    }

    /// Advances the world by `dt` seconds; returns the score.
    pub fn tick(&mut self, dt: f32) -> i64 {
        self.ticks += 1;
        for entity in &mut self.entities {
            entity.x += entity.speed * dt;
        }
        self.score += self.entities.len() as i64; // SCORING RULE
        self.score
    }

    /// The score so far.
    pub fn score(&self) -> i64 {
        self.score
    }

    /// A summary of the world.
    pub fn summary(&self) -> Summary {
        Summary {
            tick: self.ticks,
            score: self.score,
            entities: self.entities.len() as u32,
            rightmost: self.entities.iter().map(|e| e.x).fold(0.0, f32::max),
        }
    }

    /// Where entity `id` is. Panics for an unknown id (the demo shows what that does).
    pub fn position(&self, id: u32) -> f32 {
        self.entities[id as usize - 1].x
    }

    /// Which rules this build plays by.
    pub fn rules() -> abi_stable::std_types::RString {
        "one point per entity per tick".into()
    }
}
