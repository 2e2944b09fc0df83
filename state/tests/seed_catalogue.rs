//! The seed's registry in manifests/homelab/registry.yaml stays a valid catalogue: every
//! property of its ConfigMaps passes the checks, ids are unique, and it holds about the 234
//! properties of the seed system.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use homeplane_state::Catalogue;

#[test]
fn the_seed_registry_is_a_valid_catalogue_of_about_234_properties() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/homelab/registry.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut catalogue = Catalogue::default();
    let mut config_maps = 0;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(document).unwrap();
        if value["kind"].as_str() != Some("ConfigMap") {
            continue;
        }
        config_maps += 1;
        let name = value["metadata"]["name"].as_str().unwrap().to_string();
        let body = value["data"]["catalogue.yaml"].as_str().unwrap();
        catalogue.add_yaml(&name, body);
    }
    catalogue.refuse_duplicates();
    assert_eq!(config_maps, 4);
    assert!(catalogue.errors.is_empty(), "{:#?}", catalogue.errors);
    let n = catalogue.properties.len();
    assert!((225..=245).contains(&n), "{n} properties");
}
