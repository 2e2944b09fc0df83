//! The access plan's decisions: what a catalog and a spec make, and what they never make.

use super::*;

fn spec() -> DatabaseSpec {
    serde_yaml::from_str(
        r#"
server: {external: {host: db, adminSecret: admin}}
tiers:
- {name: sacred, schemas: [clinical]}
- {name: convenience, schemas: [public_data]}
roles:
- {name: app, access: [{tier: sacred, level: write}, {tier: convenience, level: write}]}
- {name: readonly, access: [{tier: convenience, level: read}]}
- {name: nologin_owner, login: false}
"#,
    )
    .unwrap()
}

fn ctx<'a>(verifiers: &'a BTreeMap<String, String>) -> Context<'a> {
    Context {
        admin: "postgres",
        database: "homelab",
        owner_mark: "home/homelab",
        verifiers,
    }
}

fn sql(plan: &[Statement]) -> Vec<String> {
    plan.iter().map(|s| s.sql.clone()).collect()
}

#[test]
fn a_fresh_server_gets_roles_schemas_grants_and_defaults() {
    let passwords = BTreeMap::from([("app".to_string(), "SCRAM-SHA-256$4096:s3cret".to_string())]);
    let plan = build(&spec(), &Catalog::default(), &ctx(&passwords)).unwrap();
    let sql = sql(&plan);
    assert_eq!(
        sql[0],
        "CREATE ROLE \"app\" LOGIN CONNECTION LIMIT -1 PASSWORD 'SCRAM-SHA-256$4096:s3cret'"
    );
    assert_eq!(
        plan[0].summary,
        "CREATE ROLE \"app\" LOGIN CONNECTION LIMIT -1 PASSWORD '<redacted>'"
    );
    assert!(sql.contains(&"CREATE ROLE \"nologin_owner\" NOLOGIN CONNECTION LIMIT -1".to_string()));
    assert!(sql.contains(&"CREATE SCHEMA \"clinical\" AUTHORIZATION \"postgres\"".to_string()));
    assert!(sql.contains(&"REVOKE ALL ON DATABASE \"homelab\" FROM PUBLIC".to_string()));
    assert!(sql.contains(&"GRANT USAGE ON SCHEMA \"clinical\" TO \"app\"".to_string()));
    assert!(
        !sql.iter()
            .any(|s| s.contains("\"clinical\"") && s.contains("\"readonly\"")),
        "readonly gets nothing in sacred"
    );
    assert!(sql.contains(
            &"ALTER DEFAULT PRIVILEGES FOR ROLE \"postgres\" IN SCHEMA \"public_data\" GRANT SELECT ON TABLES TO \"readonly\"".to_string()
        ));
    assert!(
        !plan.iter().any(|s| s.summary.contains("s3cret")),
        "no password in a summary"
    );
}

#[test]
fn hand_granted_privileges_are_revoked_and_missing_ones_granted() {
    let mut catalog = Catalog {
        schemas: ["clinical", "public_data"].map(String::from).into(),
        ..Catalog::default()
    };
    catalog
        .objects
        .insert(("clinical".into(), "notes".into(), ObjectKind::Table));
    let grant = |grantee: &str, privilege: &str| Grant {
        grantee: grantee.into(),
        kind: ObjectKind::Table,
        schema: "clinical".into(),
        name: "notes".into(),
        privilege: privilege.into(),
    };
    catalog.grants.insert(grant("readonly", "SELECT"));
    catalog.grants.insert(grant("app", "SELECT"));
    let plan = build(&spec(), &catalog, &ctx(&BTreeMap::new())).unwrap();
    let sql = sql(&plan);
    assert!(
        sql.contains(
            &"REVOKE SELECT ON TABLE \"clinical\".\"notes\" FROM \"readonly\"".to_string()
        )
    );
    assert!(sql.contains(&"GRANT INSERT ON TABLE \"clinical\".\"notes\" TO \"app\"".to_string()));
    assert!(
        !sql.contains(&"GRANT SELECT ON TABLE \"clinical\".\"notes\" TO \"app\"".to_string()),
        "already granted"
    );
    assert!(plan.iter().filter(|s| is_revoke(s)).count() == 1);
}

#[test]
fn a_converged_catalog_plans_only_the_idempotent_database_statements() {
    let passwords = BTreeMap::new();
    let first = build(&spec(), &Catalog::default(), &ctx(&passwords)).unwrap();
    // Build the catalog the first plan would leave behind.
    let mut catalog = Catalog::default();
    for role in ["app", "readonly", "nologin_owner"] {
        catalog.roles.insert(
            role.into(),
            ObservedRole {
                login: role != "nologin_owner",
                superuser: false,
                connection_limit: -1,
                comment: Some(format!("{ROLE_COMMENT_PREFIX}home/homelab")),
            },
        );
    }
    catalog.schemas = ["clinical", "public_data"].map(String::from).into();
    for s in &first {
        if let Some(rest) = s.sql.strip_prefix("GRANT USAGE ON SCHEMA ") {
            let (schema, grantee) = rest.split_once(" TO ").unwrap();
            catalog.grants.insert(Grant {
                grantee: grantee.trim_matches('"').into(),
                kind: ObjectKind::Schema,
                schema: schema.trim_matches('"').into(),
                name: String::new(),
                privilege: "USAGE".into(),
            });
        }
    }
    let ad = |schema: &str, kind, grantee: &str, privilege: &str| DefaultGrant {
        owner: "postgres".into(),
        schema: schema.into(),
        kind,
        grantee: grantee.into(),
        privilege: privilege.into(),
    };
    for (schema, grantee, write) in [
        ("clinical", "app", true),
        ("public_data", "app", true),
        ("public_data", "readonly", false),
    ] {
        let table = if write { TABLE_WRITE } else { TABLE_READ };
        let seq = if write { SEQUENCE_WRITE } else { SEQUENCE_READ };
        for p in table {
            catalog
                .default_grants
                .insert(ad(schema, ObjectKind::Table, grantee, p));
        }
        for p in seq {
            catalog
                .default_grants
                .insert(ad(schema, ObjectKind::Sequence, grantee, p));
        }
        catalog
            .default_grants
            .insert(ad(schema, ObjectKind::Routine, grantee, "EXECUTE"));
    }
    let plan = build(&spec(), &catalog, &ctx(&passwords)).unwrap();
    let sql = sql(&plan);
    assert!(sql.iter().all(|s| s.contains("ON DATABASE")), "{sql:#?}");
}

#[test]
fn refuses_superusers_reserved_names_and_shared_schemas() {
    let mut catalog = Catalog::default();
    catalog.roles.insert(
        "app".into(),
        ObservedRole {
            superuser: true,
            ..Default::default()
        },
    );
    assert_eq!(
        build(&spec(), &catalog, &ctx(&BTreeMap::new())),
        Err(PlanError::Superuser("app".into()))
    );
    let mut reserved = spec();
    reserved.roles[0].name = "postgres".into();
    assert!(matches!(
        build(&reserved, &Catalog::default(), &ctx(&BTreeMap::new())),
        Err(PlanError::ReservedRole(_))
    ));
    let mut shared = spec();
    shared.tiers[1].schemas.push("clinical".into());
    assert!(matches!(
        build(&shared, &Catalog::default(), &ctx(&BTreeMap::new())),
        Err(PlanError::SchemaInTwoTiers { .. })
    ));
}

#[test]
fn removed_roles_are_retired_not_dropped_by_default() {
    let mut catalog = Catalog::default();
    catalog.roles.insert(
        "old".into(),
        ObservedRole {
            login: true,
            comment: Some(format!("{ROLE_COMMENT_PREFIX}home/homelab")),
            ..Default::default()
        },
    );
    catalog.roles.insert(
        "foreign".into(),
        ObservedRole {
            login: true,
            ..Default::default()
        },
    );
    let sql = sql(&build(&spec(), &catalog, &ctx(&BTreeMap::new())).unwrap());
    assert!(sql.contains(&"ALTER ROLE \"old\" NOLOGIN".to_string()));
    assert!(!sql.iter().any(|s| s.contains("DROP")));
    assert!(
        !sql.iter().any(|s| s.contains("\"foreign\"")),
        "roles of others are left alone"
    );
}

fn removed(comment: &str) -> Catalog {
    let mut catalog = Catalog::default();
    catalog.roles.insert(
        "old".into(),
        ObservedRole {
            login: true,
            comment: Some(format!("{comment}home/homelab")),
            ..Default::default()
        },
    );
    catalog
}

#[test]
fn drop_never_drops_what_a_role_owns() {
    let mut spec = spec();
    spec.role_removal_policy = RoleRemovalPolicy::Drop;
    // Owns nothing: privileges revoked, role dropped, never DROP OWNED.
    let dropped =
        sql(&build(&spec, &removed(ROLE_COMMENT_PREFIX), &ctx(&BTreeMap::new())).unwrap());
    assert!(dropped.contains(&"REVOKE CONNECT ON DATABASE \"homelab\" FROM \"old\"".to_string()));
    assert!(dropped.contains(&"DROP ROLE \"old\"".to_string()));
    assert!(
        !dropped.iter().any(|s| s.contains("DROP OWNED")),
        "{dropped:#?}"
    );
    // Owns a table: refused, naming it.
    let mut catalog = removed(ROLE_COMMENT_PREFIX);
    catalog
        .owned
        .insert("old".into(), vec!["table clinical.notes".into()]);
    let refused = build(&spec, &catalog, &ctx(&BTreeMap::new())).unwrap_err();
    assert_eq!(
        refused,
        PlanError::RoleOwnsObjects {
            role: "old".into(),
            objects: vec!["table clinical.notes".into()]
        }
    );
    assert!(refused.to_string().contains("table clinical.notes"));
    assert!(refused.to_string().contains("spec.reassignOwnedTo"));
    // Unless the spec says who takes them over.
    spec.reassign_owned_to = Some("app".into());
    let reassigned = sql(&build(&spec, &catalog, &ctx(&BTreeMap::new())).unwrap());
    let reassign = reassigned
        .iter()
        .position(|s| s == "REASSIGN OWNED BY \"old\" TO \"app\"")
        .unwrap();
    let drop = reassigned
        .iter()
        .position(|s| s == "DROP ROLE \"old\"")
        .unwrap();
    assert!(reassign < drop);
    assert!(!reassigned.iter().any(|s| s.contains("DROP OWNED")));
    spec.reassign_owned_to = Some("nobody".into());
    assert!(matches!(
        build(&spec, &catalog, &ctx(&BTreeMap::new())),
        Err(PlanError::InvalidReassign(_))
    ));
}

#[test]
fn roles_that_existed_before_are_adopted_and_never_dropped() {
    let mut catalog = Catalog::default();
    catalog.roles.insert(
        "app".into(),
        ObservedRole {
            login: true,
            comment: Some("the clinic's application".into()),
            ..Default::default()
        },
    );
    let adopted = sql(&build(&spec(), &catalog, &ctx(&BTreeMap::new())).unwrap());
    assert!(
        adopted.contains(
            &"COMMENT ON ROLE \"app\" IS 'adopted by homeplane: home/homelab'".to_string()
        ),
        "{adopted:#?}"
    );
    let mut dropping = spec();
    dropping.role_removal_policy = RoleRemovalPolicy::Drop;
    let released = sql(&build(
        &dropping,
        &removed(ADOPTED_COMMENT_PREFIX),
        &ctx(&BTreeMap::new()),
    )
    .unwrap());
    assert!(
        !released.iter().any(|s| s.contains("DROP")),
        "{released:#?}"
    );
    assert!(released.contains(&"COMMENT ON ROLE \"old\" IS NULL".to_string()));
}

#[test]
fn statements_never_show_their_sql_in_debug() {
    let passwords = BTreeMap::from([("app".to_string(), "SCRAM-SHA-256$verifier".to_string())]);
    let plan = build(&spec(), &Catalog::default(), &ctx(&passwords)).unwrap();
    let debug = format!("{plan:?}");
    assert!(!debug.contains("verifier"), "{debug}");
    assert!(debug.contains("<redacted>"));
}

#[test]
fn routines_lose_public_execute_and_readers_get_it() {
    let mut catalog = Catalog::default();
    catalog.objects.insert((
        "public_data".into(),
        "score(integer, text)".into(),
        ObjectKind::Routine,
    ));
    catalog.grants.insert(Grant {
        grantee: "public".into(),
        kind: ObjectKind::Routine,
        schema: "public_data".into(),
        name: "score(integer, text)".into(),
        privilege: "EXECUTE".into(),
    });
    let sql = sql(&build(&spec(), &catalog, &ctx(&BTreeMap::new())).unwrap());
    assert!(
        sql.contains(
            &"REVOKE EXECUTE ON ROUTINE \"public_data\".\"score\"(integer, text) FROM PUBLIC"
                .to_string()
        ),
        "{sql:#?}"
    );
    assert!(
        sql.contains(
            &"GRANT EXECUTE ON ROUTINE \"public_data\".\"score\"(integer, text) TO \"readonly\""
                .to_string()
        )
    );
}

#[test]
fn keyword_role_names_are_quoted() {
    let mut spec = spec();
    spec.roles[1].name = "select".into();
    let sql = sql(&build(&spec, &Catalog::default(), &ctx(&BTreeMap::new())).unwrap());
    assert!(sql.contains(&"CREATE ROLE \"select\" LOGIN CONNECTION LIMIT -1".to_string()));
}

/// Applies a plan to a model of the server's catalog, reading back the statements the plan
/// writes (their grammar is the plan's own).
fn apply(catalog: &mut Catalog, plan: &[Statement]) {
    fn ident(text: &str) -> (String, &str) {
        let body = text.strip_prefix('"').unwrap();
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if body[i + 1..].starts_with('"') {
                    out.push('"');
                    chars.next();
                    continue;
                }
                return (out, &body[i + 1..]);
            }
            out.push(c);
        }
        panic!("unclosed identifier in {text}")
    }
    fn grantee(text: &str) -> String {
        if text == "PUBLIC" {
            "public".into()
        } else {
            ident(text).0
        }
    }
    fn kind_of(word: &str) -> ObjectKind {
        match word {
            "SCHEMA" => ObjectKind::Schema,
            "TABLE" | "TABLES" => ObjectKind::Table,
            "SEQUENCE" | "SEQUENCES" => ObjectKind::Sequence,
            _ => ObjectKind::Routine,
        }
    }
    for statement in plan {
        let sql = statement.sql.as_str();
        if sql.contains(" ON DATABASE ") {
            continue;
        }
        if let Some(rest) = sql.strip_prefix("CREATE ROLE ") {
            let (name, rest) = ident(rest);
            let login = rest.trim_start().starts_with("LOGIN");
            let limit = rest
                .split("CONNECTION LIMIT ")
                .nth(1)
                .and_then(|l| l.split_whitespace().next())
                .and_then(|l| l.parse().ok())
                .unwrap();
            catalog.roles.insert(
                name,
                ObservedRole {
                    login,
                    superuser: false,
                    connection_limit: limit,
                    comment: None,
                },
            );
        } else if let Some(rest) = sql.strip_prefix("ALTER ROLE ") {
            let (name, rest) = ident(rest);
            let rest = rest.trim_start();
            let role = catalog.roles.get_mut(&name).unwrap();
            if rest.starts_with("LOGIN") || rest.starts_with("NOLOGIN") {
                role.login = rest.starts_with("LOGIN");
                if let Some(limit) = rest.split("CONNECTION LIMIT ").nth(1) {
                    role.connection_limit = limit.trim().parse().unwrap();
                }
            }
        } else if let Some(rest) = sql.strip_prefix("COMMENT ON ROLE ") {
            let (name, rest) = ident(rest);
            let value = rest.trim_start().strip_prefix("IS ").unwrap();
            catalog.roles.get_mut(&name).unwrap().comment = if value == "NULL" {
                None
            } else {
                Some(value.trim_matches('\'').replace("''", "'"))
            };
        } else if let Some(rest) = sql.strip_prefix("CREATE SCHEMA ") {
            catalog.schemas.insert(ident(rest).0);
        } else if let Some(rest) = sql.strip_prefix("DROP ROLE ") {
            catalog.roles.remove(&ident(rest).0);
        } else if sql.starts_with("REASSIGN OWNED") {
        } else if let Some(rest) = sql.strip_prefix("ALTER DEFAULT PRIVILEGES FOR ROLE ") {
            let (owner, rest) = ident(rest);
            let (schema, rest) = ident(rest.strip_prefix(" IN SCHEMA ").unwrap());
            let words: Vec<&str> = rest.split_whitespace().collect();
            // [GRANT|REVOKE, priv, ON, KIND, TO|FROM, grantee]
            let grant = DefaultGrant {
                owner,
                schema,
                kind: kind_of(words[3]),
                grantee: grantee(words[5]),
                privilege: words[1].to_string(),
            };
            if words[0] == "GRANT" {
                catalog.default_grants.insert(grant);
            } else {
                catalog.default_grants.remove(&grant);
            }
        } else {
            let (verb, rest) = sql.split_once(' ').unwrap();
            let (privilege, rest) = rest.split_once(" ON ").unwrap();
            let (kind_word, rest) = rest.split_once(' ').unwrap();
            let kind = kind_of(kind_word);
            let (schema, rest) = ident(rest);
            let (name, rest) = match kind {
                ObjectKind::Schema => (String::new(), rest),
                _ => {
                    let (name, rest) = ident(rest.strip_prefix('.').unwrap());
                    if kind == ObjectKind::Routine {
                        let (args, rest) = rest.split_once(')').unwrap();
                        (format!("{name}{args})"), rest)
                    } else {
                        (name, rest)
                    }
                }
            };
            let who = rest
                .strip_prefix(if verb == "GRANT" { " TO " } else { " FROM " })
                .unwrap();
            let g = Grant {
                grantee: grantee(who),
                kind,
                schema,
                name,
                privilege: privilege.to_string(),
            };
            if verb == "GRANT" {
                catalog.grants.insert(g);
            } else {
                catalog.grants.remove(&g);
            }
        }
    }
}

mod properties {
    use super::*;
    use homeplane_crds::database::{Role, Tier, TierAccess};
    use proptest::prelude::*;

    const TIERS: [(&str, &[&str]); 3] = [
        ("sacred", &["clinical"]),
        ("sensitive", &["messages", "health"]),
        ("convenience", &["public_data"]),
    ];
    const ROLES: [&str; 4] = ["app", "reader", "select", "we\"ird"];
    const SCHEMAS: [&str; 5] = ["clinical", "messages", "health", "public_data", "other"];

    fn access() -> impl Strategy<Value = Access> {
        prop_oneof![Just(Access::None), Just(Access::Read), Just(Access::Write)]
    }

    fn spec() -> impl Strategy<Value = DatabaseSpec> {
        (
            proptest::collection::vec(any::<bool>(), 3),
            proptest::collection::vec(
                (
                    any::<bool>(),
                    any::<bool>(),
                    proptest::collection::vec(access(), 3),
                ),
                4,
            ),
            any::<bool>(),
        )
            .prop_map(|(tiers_on, roles, drop)| {
                let tiers: Vec<Tier> = TIERS
                    .iter()
                    .zip(&tiers_on)
                    .filter(|(_, on)| **on)
                    .map(|((name, schemas), _)| Tier {
                        name: name.to_string(),
                        schemas: schemas.iter().map(|s| s.to_string()).collect(),
                        ..Tier::default()
                    })
                    .collect();
                let roles = ROLES
                    .iter()
                    .zip(roles)
                    .filter(|(_, (declared, _, _))| *declared)
                    .map(|(name, (_, login, levels))| Role {
                        name: name.to_string(),
                        login,
                        access: tiers
                            .iter()
                            .zip(&levels)
                            .map(|(t, level)| TierAccess {
                                tier: t.name.clone(),
                                level: *level,
                            })
                            .collect(),
                        ..Role::default()
                    })
                    .collect();
                DatabaseSpec {
                    tiers,
                    roles,
                    role_removal_policy: if drop {
                        RoleRemovalPolicy::Drop
                    } else {
                        RoleRemovalPolicy::Retire
                    },
                    ..DatabaseSpec::default()
                }
            })
    }

    fn privilege(kind: ObjectKind) -> impl Strategy<Value = String> {
        let options: &'static [&'static str] = match kind {
            ObjectKind::Schema => &["USAGE", "CREATE"],
            ObjectKind::Table => &["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"],
            ObjectKind::Sequence => &["SELECT", "USAGE", "UPDATE"],
            ObjectKind::Routine => &["EXECUTE"],
        };
        proptest::sample::select(options).prop_map(str::to_string)
    }

    fn kind() -> impl Strategy<Value = ObjectKind> {
        prop_oneof![
            Just(ObjectKind::Schema),
            Just(ObjectKind::Table),
            Just(ObjectKind::Sequence),
            Just(ObjectKind::Routine)
        ]
    }

    /// A server as someone left it: objects in the tier schemas, privileges granted by
    /// hand (to declared roles, to others, to PUBLIC), default privileges, roles of this
    /// Database that the spec may no longer declare, and roles that existed before.
    fn catalog() -> impl Strategy<Value = Catalog> {
        let object = (proptest::sample::select(&SCHEMAS[..]), 0u8..3, kind());
        let grantee = proptest::sample::select(
            &["app", "reader", "select", "we\"ird", "public", "stranger"][..],
        );
        let target = (proptest::sample::select(&SCHEMAS[..]), 0u8..3, kind());
        let grant = (target, grantee, kind()).prop_flat_map(|((schema, n, kind), grantee, _)| {
            privilege(kind).prop_map(move |privilege| Grant {
                grantee: grantee.to_string(),
                kind,
                schema: schema.to_string(),
                name: match kind {
                    ObjectKind::Schema => String::new(),
                    ObjectKind::Routine => format!("f{n}(integer)"),
                    _ => format!("t{n}"),
                },
                privilege,
            })
        });
        let role = (proptest::sample::select(&ROLES[..]), 0u8..3, any::<bool>());
        (
            proptest::collection::vec(object, 0..8),
            proptest::collection::vec(grant, 0..12),
            proptest::collection::vec(role, 0..4),
        )
            .prop_map(|(objects, grants, roles)| {
                let mut catalog = Catalog::default();
                for (schema, n, kind) in objects {
                    if kind == ObjectKind::Schema {
                        catalog.schemas.insert(schema.to_string());
                        continue;
                    }
                    let name = if kind == ObjectKind::Routine {
                        format!("f{n}(integer)")
                    } else {
                        format!("t{n}")
                    };
                    catalog.schemas.insert(schema.to_string());
                    catalog.objects.insert((schema.to_string(), name, kind));
                }
                for g in grants {
                    let exists = g.kind == ObjectKind::Schema
                        || catalog
                            .objects
                            .contains(&(g.schema.clone(), g.name.clone(), g.kind));
                    if exists && catalog.schemas.contains(&g.schema) {
                        catalog.grants.insert(g);
                    }
                }
                for (name, mark, login) in roles {
                    let comment = match mark {
                        0 => Some(format!("{ROLE_COMMENT_PREFIX}home/homelab")),
                        1 => Some(format!("{ADOPTED_COMMENT_PREFIX}home/homelab")),
                        _ => Some("made by hand".to_string()),
                    };
                    catalog.roles.insert(
                        name.to_string(),
                        ObservedRole {
                            login,
                            superuser: false,
                            connection_limit: -1,
                            comment,
                        },
                    );
                }
                catalog
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A plan applied, then planned again, leaves nothing to do (but the idempotent
        /// database-level statements every plan carries).
        #[test]
        fn a_plan_applied_then_replanned_is_empty(spec in spec(), mut catalog in catalog()) {
            let verifiers = BTreeMap::new();
            let first = build(&spec, &catalog, &ctx(&verifiers)).unwrap();
            apply(&mut catalog, &first);
            // Roles that were declared now exist; what PostgreSQL would hold after the
            // statements, read again.
            let second = build(&spec, &catalog, &ctx(&verifiers)).unwrap();
            let left = changes(&second);
            prop_assert!(left.is_empty(), "left after applying: {left:#?}\nfirst: {:#?}", changes(&first));
        }
    }
}
