use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

use abi_stable::StableAbi;
use abi_stable::std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec, Tuple2};
use hotreload::{Rehome, hot_fn};
use serde::{Deserialize, Serialize};

#[repr(C)]
#[derive(StableAbi, Rehome, Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

#[repr(u8)]
#[derive(StableAbi, Rehome, Clone, Debug, PartialEq)]
pub enum Shape {
    Dot(Point),
    Named { name: RString },
    Nothing,
}

#[derive(Default, Serialize, Deserialize)]
pub struct World {
    points: Vec<(f32, f32)>,
    name: String,
}

#[hotreload::hot_module(version = 7, name = "the_world", state_version = 2, on_retire = forget)]
impl World {
    pub fn add(&mut self, p: Point) -> u64 {
        self.points.push((p.x, p.y));
        self.points.len() as u64
    }

    pub fn first(&self) -> ROption<Point> {
        self.points.first().map(|&(x, y)| Point { x, y }).into()
    }

    pub fn rename(&mut self, name: RStr<'_>) -> RResult<RString, RString> {
        if name.is_empty() {
            RResult::RErr("empty".into())
        } else {
            self.name = name.to_string();
            RResult::ROk(name.into())
        }
    }

    pub fn sum(values: RSlice<'_, i32>) -> i64 {
        values.iter().map(|&v| i64::from(v)).sum()
    }

    pub fn all(&self) -> RVec<Tuple2<f32, f32>> {
        self.points.iter().map(|&(x, y)| Tuple2(x, y)).collect()
    }

    pub fn shape(&self, boxed: RBox<Point>) -> Shape {
        Shape::Dot(*boxed)
    }

    pub fn clear(&mut self, _unused: bool, mut count: u8) -> u32 {
        count += 1;
        self.points.clear();
        u32::from(count)
    }

    pub fn nothing() {}

    pub fn ordinary(
        &mut self,
        name: String,
        tag: &str,
        bytes: &[u8],
        list: Vec<(u8, String)>,
        maybe: Option<Result<Box<u64>, String>>,
    ) -> (String, Vec<String>, Option<u64>) {
        self.name = format!("{name}{tag}{}", bytes.len());
        let names = list.into_iter().map(|(_, s)| s).collect();
        let value = maybe.and_then(Result::ok).map(|b| *b);
        (self.name.clone(), names, value)
    }

    pub fn index(
        &self,
        counts: HashMap<String, u32>,
        hashed: HashMap<u8, Vec<String>, BuildHasherDefault<std::hash::DefaultHasher>>,
        nested: Option<BTreeMap<(u8, String), HashMap<String, Box<Vec<String>>>>>,
    ) -> (
        BTreeMap<String, u64>,
        HashMap<String, Option<String>, BuildHasherDefault<std::hash::DefaultHasher>>,
    ) {
        let sorted = counts.into_iter().map(|(k, v)| (k, u64::from(v))).collect();
        let names = hashed
            .into_values()
            .flatten()
            .map(|name| (name.clone(), Some(name)))
            .collect();
        let _ = nested;
        (sorted, names)
    }

    fn private_helper(&self) -> usize {
        self.points.len()
    }

    fn forget(&mut self) {
        self.points.clear();
    }
}

#[allow(dead_code)]
fn host(world: &hotreload::Module<World>) -> Result<(), hotreload::HotError> {
    let _: u64 = hot_fn!(world.add(Point { x: 1.0, y: 2.0 }))?;
    let _: ROption<Point> = hot_fn!(world.first())?;
    let _: RResult<RString, RString> = hot_fn!(world.rename(RStr::from("earth")))?;
    let _: i64 = hot_fn!(world.sum(RSlice::from_slice(&[1, 2, 3])))?;
    let _: RVec<Tuple2<f32, f32>> = hot_fn!(world.all())?;
    let _: Shape = hot_fn!(world.shape(RBox::new(Point { x: 0.0, y: 0.0 })))?;
    let _: u32 = hot_fn!(world.clear(true, 3))?;
    hot_fn!(world.nothing())?;
    let (_name, _names, _value): (String, Vec<String>, Option<u64>) = hot_fn!(world.ordinary(
        "earth".to_owned(),
        "!",
        &[1, 2, 3],
        vec![(1, "a".to_owned())],
        Some(Ok(Box::new(7)))
    ))?;
    let (_sorted, _names): (
        BTreeMap<String, u64>,
        HashMap<String, Option<String>, BuildHasherDefault<std::hash::DefaultHasher>>,
    ) = hot_fn!(world.index(
        HashMap::from([("a".to_owned(), 1)]),
        HashMap::default(),
        Some(BTreeMap::from([(
            (1, "b".to_owned()),
            HashMap::from([("c".to_owned(), Box::new(vec!["d".to_owned()]))])
        )]))
    ))?;
    Ok(())
}

fn main() {
    assert_eq!(<World as hotreload::HotModule>::MODULE_NAME, "the_world");
    assert_eq!(<World as hotreload::HotModule>::API_VERSION, 7);
    assert_eq!(<World as hotreload::HotModule>::STATE_VERSION, 2);
    let _ = World::default().private_helper();
    let mut world = World {
        points: vec![(1.0, 2.0)],
        name: String::new(),
    };
    hotreload::HotModule::on_retire(&mut world);
    assert!(world.points.is_empty(), "on_retire runs the named method");
}
