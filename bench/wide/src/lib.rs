//! A module of 20 methods for the edit-loop benchmark: it edits `tag` and measures the time
//! from saving the file to the running program answering with the new value.

use abi_stable::std_types::RString;
use serde::{Deserialize, Serialize};

/// A list of numbers and a name, carried from build to build.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Wide {
    name: String,
    values: Vec<i64>,
}

#[hotreload::hot_module(version = 1)]
impl Wide {
    pub fn push(&mut self, value: i64) -> u64 {
        self.values.push(value);
        self.values.len() as u64
    }

    pub fn pop(&mut self) -> i64 {
        self.values.pop().unwrap_or_default()
    }

    pub fn count(&self) -> u64 {
        self.values.len() as u64
    }

    pub fn sum(&self) -> i64 {
        self.values.iter().sum()
    }

    pub fn min(&self) -> i64 {
        self.values.iter().copied().min().unwrap_or_default()
    }

    pub fn max(&self) -> i64 {
        self.values.iter().copied().max().unwrap_or_default()
    }

    pub fn mean(&self) -> f64 {
        if self.values.is_empty() {
            return 0.0;
        }
        self.sum() as f64 / self.values.len() as f64
    }

    pub fn scale(&mut self, factor: i64) -> i64 {
        for v in &mut self.values {
            *v = v.saturating_mul(factor);
        }
        self.sum()
    }

    pub fn clear(&mut self) -> u64 {
        let n = self.values.len() as u64;
        self.values.clear();
        n
    }

    pub fn name(&self) -> RString {
        self.name.as_str().into()
    }

    pub fn rename(&mut self, name: RString) -> u64 {
        self.name = name.into_string();
        self.name.len() as u64
    }

    pub fn greet(&self, who: RString) -> RString {
        format!("{} greets {who}", self.name).into()
    }

    pub fn values(&self) -> Vec<i64> {
        self.values.clone()
    }

    pub fn extend(&mut self, more: Vec<i64>) -> u64 {
        self.values.extend(more);
        self.values.len() as u64
    }

    pub fn count_above(&self, limit: i64) -> u64 {
        self.values.iter().filter(|v| **v > limit).count() as u64
    }

    pub fn checksum(&self) -> u64 {
        self.values.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, v| {
            (h ^ *v as u64).wrapping_mul(0x100_0000_01b3)
        })
    }

    pub fn add(a: u64, b: u64) -> u64 {
        a.wrapping_add(b)
    }

    pub fn clamp(value: i64, low: i64, high: i64) -> i64 {
        value.clamp(low, high.max(low))
    }

    pub fn words(text: RString) -> u64 {
        text.split_whitespace().count() as u64
    }

    pub fn tag() -> u64 {
        1 // TAG
    }
}
