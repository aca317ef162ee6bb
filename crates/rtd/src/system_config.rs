//! `rtd start --system-config JSON`: Ray's bag of internal settings, as users copy it
//! from Ray's docs and scripts.
//!
//! Ray accepts hundreds of keys there; rtd honours the one people set in practice,
//! `object_spilling_config`, which says where the object store spills when it is
//! full. Ray spells that value as a JSON *string* inside the JSON
//! (`{"object_spilling_config": "{\"type\": \"filesystem\", \"params\": {...}}"}`);
//! a plain nested object is accepted too. Everything rtd does not honour becomes a
//! notice naming it, so a setting that would change behaviour under Ray is never
//! dropped silently.

use std::path::PathBuf;

use serde_json::{Map, Value};

/// What rtd takes from `--system-config`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SystemConfig {
    /// `object_spilling_config` of type `filesystem`: spill under this directory.
    pub spill_directory: Option<PathBuf>,
    /// One line per setting rtd ignores, for the user to read.
    pub notices: Vec<String>,
}

impl SystemConfig {
    /// Parses the flag's value; an error says what is malformed (clap adds the flag).
    pub fn parse(text: &str) -> Result<Self, String> {
        let Value::Object(entries) = parse_json(text)? else {
            return Err("expected a JSON object, e.g. '{\"object_spilling_config\": ...}'".into());
        };
        let mut config = SystemConfig::default();
        let mut unknown = Vec::new();
        for (key, value) in entries {
            match key.as_str() {
                "object_spilling_config" => config.read_spilling(value)?,
                _ => unknown.push(key),
            }
        }
        if !unknown.is_empty() {
            config.notices.push(format!("--system-config keys rtd does not support, ignored: {}", unknown.join(", ")));
        }
        Ok(config)
    }

    fn read_spilling(&mut self, value: Value) -> Result<(), String> {
        let spilling = match value {
            Value::String(text) => parse_json(&text).map_err(|e| format!("object_spilling_config: {e}"))?,
            other => other,
        };
        let Value::Object(mut spilling) = spilling else {
            return Err("object_spilling_config must be an object with \"type\" and \"params\"".into());
        };
        let kind = spilling.remove("type");
        if kind.as_ref().and_then(Value::as_str) != Some("filesystem") {
            self.notices.push(format!(
                "object_spilling_config type {} is not supported (only \"filesystem\"); objects spill to the session directory",
                kind.map_or_else(|| "(none)".to_string(), |k| k.to_string())
            ));
            return Ok(());
        }
        let mut params = match spilling.remove("params") {
            Some(Value::Object(params)) => params,
            None => Map::new(),
            Some(_) => return Err("object_spilling_config \"params\" must be an object".into()),
        };
        match params.remove("directory_path") {
            Some(Value::String(dir)) if !dir.is_empty() => self.spill_directory = Some(PathBuf::from(dir)),
            Some(Value::Array(_)) => {
                return Err(
                    "rtd spills to one directory: give object_spilling_config's directory_path as a string".into()
                )
            }
            _ => return Err("object_spilling_config of type \"filesystem\" needs params.directory_path".into()),
        }
        if !params.is_empty() {
            let ignored: Vec<&str> = params.keys().map(String::as_str).collect();
            self.notices
                .push(format!("object_spilling_config params rtd does not support, ignored: {}", ignored.join(", ")));
        }
        Ok(())
    }
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spilling_config_as_a_json_string_inside_the_json_as_ray_writes_it() {
        let text = r#"{"object_spilling_config": "{\"type\": \"filesystem\", \"params\": {\"directory_path\": \"/tmp/spill\"}}"}"#;
        let config = SystemConfig::parse(text).unwrap();
        assert_eq!(config.spill_directory, Some(PathBuf::from("/tmp/spill")));
        assert!(config.notices.is_empty());
    }

    #[test]
    fn spilling_config_as_a_nested_object() {
        let text = r#"{"object_spilling_config": {"type": "filesystem", "params": {"directory_path": "/data/spill"}}}"#;
        assert_eq!(SystemConfig::parse(text).unwrap().spill_directory, Some(PathBuf::from("/data/spill")));
    }

    #[test]
    fn unknown_keys_and_params_are_named_in_notices() {
        let text = r#"{"object_spilling_config": {"type": "filesystem", "params": {"directory_path": "/s", "buffer_size": 1}},
                       "max_io_workers": 4, "min_spilling_size": 1}"#;
        let config = SystemConfig::parse(text).unwrap();
        assert_eq!(config.spill_directory, Some(PathBuf::from("/s")));
        assert!(config.notices.iter().any(|n| n.contains("max_io_workers, min_spilling_size")), "{:?}", config.notices);
        assert!(config.notices.iter().any(|n| n.contains("buffer_size")), "{:?}", config.notices);
    }

    #[test]
    fn other_spilling_types_keep_the_default_with_a_notice() {
        let text = r#"{"object_spilling_config": "{\"type\": \"smart_open\", \"params\": {\"uri\": \"s3://b\"}}"}"#;
        let config = SystemConfig::parse(text).unwrap();
        assert_eq!(config.spill_directory, None);
        assert!(config.notices[0].contains("\"smart_open\""), "{:?}", config.notices);
    }

    #[test]
    fn malformed_values_are_errors_saying_what_is_wrong() {
        for (text, message) in [
            ("{bad", "not valid JSON"),
            ("[1]", "JSON object"),
            (r#"{"object_spilling_config": "{oops"}"#, "object_spilling_config"),
            (r#"{"object_spilling_config": {"type": "filesystem"}}"#, "directory_path"),
            (
                r#"{"object_spilling_config": {"type": "filesystem", "params": {"directory_path": ["/a", "/b"]}}}"#,
                "one directory",
            ),
        ] {
            let err = SystemConfig::parse(text).unwrap_err();
            assert!(err.contains(message), "{text}: {err}");
        }
    }
}
