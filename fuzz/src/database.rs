//! The Database controller's SQL quoting and migration files (siblings, as in the operator).

#[path = "../../operator/src/controllers/database/sql.rs"]
pub mod sql;

#[path = "../../operator/src/controllers/database/migrate.rs"]
pub mod migrate;
