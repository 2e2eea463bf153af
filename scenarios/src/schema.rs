//! The JSON Schema of the scenario format, generated from the DTOs so it cannot drift.

use crate::dto::ScenarioDto;

/// Pretty-printed JSON Schema (draft 7) of a v1 scenario file.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(ScenarioDto);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dto::{EVENT_KINDS, EXPECT_KINDS};

    #[test]
    fn schema_is_json_and_names_every_kind() {
        let text = json_schema();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let event = &v["definitions"]["EventDto"]["properties"];
        for kind in EVENT_KINDS {
            assert!(
                event.get(kind).is_some(),
                "event kind {kind} missing from schema"
            );
        }
        let expect = &v["definitions"]["ExpectDto"]["properties"];
        for kind in EXPECT_KINDS {
            assert!(
                expect.get(kind).is_some(),
                "expectation {kind} missing from schema"
            );
        }
        assert_eq!(v["additionalProperties"], serde_json::json!(false));
        assert!(v["required"].as_array().unwrap().contains(&"schema".into()));
        let dur = &v["definitions"]["DurationDto"];
        assert_eq!(dur["type"], "string");
        assert!(dur["pattern"].as_str().unwrap().contains("cycles"));
        assert!(text.contains("split"), "phases documentation missing");
    }
}
