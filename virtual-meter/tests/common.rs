//! Shared helpers: the library's sag scenario and meters built from it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sim_core::Scenario;
use virtual_meter::{LiveMeter, MapOptions, MeterRef, RegisterMap, SharedMeter};

pub const SAG: &str = "scenarios/library/sags-swells/sag-75pct-12-cycles.yaml";

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

pub fn scenario(rel: &str) -> Scenario {
    scenarios::load_file(&repo_path(rel)).unwrap()
}

pub fn default_map() -> Arc<RegisterMap> {
    Arc::new(RegisterMap::default_map(MapOptions::default()))
}

pub fn meter(scenario: &Scenario, index: u32, map: Arc<RegisterMap>) -> SharedMeter {
    Arc::new(Mutex::new(LiveMeter::new(
        scenario,
        MeterRef { group: 0, index },
        map,
    )))
}
