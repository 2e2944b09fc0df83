-- Drift history of the state registry: one row per transition of a property between
-- InSync, Drifted and Unknown (from_state is NULL the first time a property is seen).
CREATE TABLE drift_transitions (
    id          bigserial PRIMARY KEY,
    namespace   text        NOT NULL,
    registry    text        NOT NULL,
    property    text        NOT NULL,
    from_state  text,
    to_state    text        NOT NULL,
    severity    text        NOT NULL,
    desired     jsonb,
    observed    jsonb,
    message     text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX drift_transitions_property_at ON drift_transitions (property, at DESC);
CREATE INDEX drift_transitions_at ON drift_transitions (at);
