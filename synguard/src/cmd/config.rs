//! `synguard config show|set`: the settings in force, changed live through the config map
//! (the program reads it for every packet, so a change applies to the next packet).

use serde_json::{Map, Value};

use super::{State, print_json, table};
use crate::{
    config::{KEYS, Settings},
    error::usage,
};

pub fn show(state: &State, json: bool) -> anyhow::Result<()> {
    let settings = Settings::from_kernel(&state.maps.read_config()?);
    if json {
        let mut m = Map::new();
        for (k, v) in settings.entries() {
            m.insert(k.to_string(), Value::String(v));
        }
        return print_json(&m);
    }
    let rows = KEYS
        .iter()
        .map(|k| {
            let v = settings.get(k.name).unwrap_or_default();
            let changed = if v == k.default { "" } else { " *" };
            vec![
                k.name.to_string(),
                format!("{}{changed}", if v.is_empty() { "(all)" } else { &v }),
                if k.default.is_empty() {
                    "(all)".to_string()
                } else {
                    k.default.to_string()
                },
                k.help.to_string(),
            ]
        })
        .collect();
    println!("{}", table(&["key", "value", "default", "meaning"], rows));
    println!("(* differs from the default)");
    Ok(())
}

pub fn set(state: &mut State, key: &str, value: &str) -> anyhow::Result<()> {
    let _lock = state.write_lock()?;
    let current = state.maps.read_config()?;
    let mut settings = Settings::from_kernel(&current);
    let old = settings.get(key);
    settings.set(key, value).map_err(|e| usage(e.to_string()))?;
    let next = settings.next_kernel(&current);
    state.maps.write_config(&next)?;
    let new = settings.get(key).unwrap_or_default();
    println!(
        "{key}: {} -> {} (in force now; a restart or a SIGHUP reload goes back to the \
         config file and command line, so put it there to keep it)",
        show_value(old.as_deref().unwrap_or_default()),
        show_value(&new)
    );
    state.note_no_daemon();
    Ok(())
}

fn show_value(v: &str) -> String {
    if v.is_empty() {
        "(all)".into()
    } else {
        v.into()
    }
}
