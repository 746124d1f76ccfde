//! The `--json` schema documents (`docs/json/<name>.schema.json`) and the check every JSON object a
//! test reads goes through ([`super::json_exit`]): the object names its schema (`"schema":
//! "warmcache.<name>/<major>"`), the document with that identity exists, and the object is valid
//! against it. The documents are closed (`additionalProperties: false`), so an output field that
//! no document describes fails whichever test meets it first (docs/DESIGN.md, "JSON output").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The directory of the schema documents.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/json")
}

/// Every schema document, by name (`ensure` for `ensure.schema.json`), each checked against the
/// draft 2020-12 meta-schema once.
pub fn documents() -> &'static BTreeMap<String, serde_json::Value> {
    static DOCS: OnceLock<BTreeMap<String, serde_json::Value>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut docs = BTreeMap::new();
        for entry in std::fs::read_dir(dir()).expect("docs/json is missing") {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".schema.json") else {
                panic!("{} is not a `<name>.schema.json` document", path.display());
            };
            let text = std::fs::read_to_string(&path).unwrap();
            let doc: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            if let Err(e) = jsonschema::meta::validate(&doc) {
                panic!("{} is not a valid JSON Schema: {e}", path.display());
            }
            let id = format!("warmcache.{name}/{}", major(&doc, &path));
            assert_eq!(
                doc["title"],
                id,
                "{}: the title must be its identity",
                path.display()
            );
            assert_eq!(
                doc["properties"]["schema"]["const"],
                id,
                "{}: `schema` must be the constant {id}",
                path.display()
            );
            docs.insert(name.to_owned(), doc);
        }
        docs
    })
}

/// The major version in a document's `$id` (`urn:warmcache:json:<name>:<major>`).
fn major(doc: &serde_json::Value, path: &std::path::Path) -> u32 {
    doc["$id"]
        .as_str()
        .and_then(|id| id.rsplit(':').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("{}: `$id` must end in `:<major version>`", path.display()))
}

/// The problems of `value` against the document it names; empty when it is valid.
pub fn problems(value: &serde_json::Value) -> Vec<String> {
    let Some(id) = value.get("schema").and_then(|s| s.as_str()) else {
        return vec![format!("the object has no `schema` identity: {value}")];
    };
    let Some(name) = id
        .strip_prefix("warmcache.")
        .and_then(|rest| rest.split_once('/'))
        .map(|(name, _)| name)
    else {
        return vec![format!("`schema` is `{id}`, not `warmcache.<name>/<major>`")];
    };
    let Some(doc) = documents().get(name) else {
        return vec![format!(
            "`schema` is `{id}` but there is no docs/json/{name}.schema.json"
        )];
    };
    let validator = jsonschema::draft202012::new(doc)
        .unwrap_or_else(|e| panic!("docs/json/{name}.schema.json does not compile: {e}"));
    let mut found: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("at `{}`: {e}", e.instance_path()))
        .collect();
    // A `oneOf` says only that no variant matched: name each variant's own objections, which
    // point at the field (an undocumented one, a wrong type).
    if !found.is_empty()
        && let Some(variants) = doc["oneOf"].as_array()
    {
        for (i, variant) in variants.iter().enumerate() {
            let mut alone = variant.clone();
            if let Some(obj) = alone.as_object_mut() {
                obj.insert("$defs".into(), doc["$defs"].clone());
                obj.insert("properties".into(), {
                    let mut props = variant["properties"].clone();
                    props["schema"] = doc["properties"]["schema"].clone();
                    props
                });
            }
            if let Ok(v) = jsonschema::draft202012::new(&alone) {
                for e in v.iter_errors(value) {
                    found.push(format!(
                        "variant {i} ({}): at `{}`: {e}",
                        variant["description"],
                        e.instance_path()
                    ));
                }
            }
        }
    }
    found
}

/// Panics unless `value` is valid against the schema document it names.
pub fn check(value: &serde_json::Value) {
    let found = problems(value);
    assert!(
        found.is_empty(),
        "a --json object does not match its schema (docs/json; docs/DESIGN.md, \"JSON output\"): \
         update the document with the output\n{value}\n{}",
        found.join("\n")
    );
}
