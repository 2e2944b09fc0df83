//! Quoting for PostgreSQL: every identifier and literal homeplane puts into SQL goes through
//! here, so no name from a spec can change the meaning of a statement.

/// `name` as a quoted identifier: `"name"`, with embedded quotes doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.name` with both parts quoted.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// `text` as a string literal: `'text'`, with embedded quotes doubled. Backslashes are
/// literal because `standard_conforming_strings` is on (the default since 9.1; checked on
/// connect).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// What PostgreSQL said about a failed statement (its message alone for a server error).
pub fn message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

/// Marks a statement built from [`ident`] and [`literal`] (or a migration file's own SQL) as
/// audited for sqlx, which refuses unmarked dynamic SQL.
pub fn audited(sql: impl Into<String>) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(ident("app"), "\"app\"");
        assert_eq!(ident("select"), "\"select\"");
        assert_eq!(
            ident("x\"; DROP TABLE t; --"),
            "\"x\"\"; DROP TABLE t; --\""
        );
        assert_eq!(qualified("clinical", "notes"), "\"clinical\".\"notes\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("'; DROP ROLE app; --"), "'''; DROP ROLE app; --'");
    }
}
