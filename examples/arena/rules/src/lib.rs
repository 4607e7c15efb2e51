//! The arena's rules, a plain crate the three modules share (a path dependency of each):
//! editing it changes all three builds, which then reload together.

/// How hard bodies fall, in metres per second squared.
pub const GRAVITY: f32 = 9.81;

/// Where the floor is.
pub const FLOOR: f32 = 0.0;
