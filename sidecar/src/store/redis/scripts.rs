//! The Lua scripts, kept in `lua/` so that they read and review as Lua.
//! Scripts are not replicated and a new master starts without them: they
//! are loaded on every new connection, so that they can run in pipelines.

use redis::Script;
use redis::aio::MultiplexedConnection;

const REVOKE_FAMILY_FN: &str = include_str!("lua/revoke_family_fn.lua");

pub(super) struct Scripts {
    /// Spends an authorization code once.
    pub redeem: Script,
    /// Creates a refresh family, revoked if it was revoked before it existed.
    pub create_family: Script,
    /// Rotates a refresh token; reuse revokes the family.
    pub rotate: Script,
    pub revoke_family: Script,
    /// Both rate limits of a token request in one call.
    pub gcra: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let with_revoke = |script: &str| Script::new(&format!("{REVOKE_FAMILY_FN}{script}"));
        Self {
            redeem: Script::new(include_str!("lua/redeem.lua")),
            create_family: with_revoke(include_str!("lua/create_family.lua")),
            rotate: with_revoke(include_str!("lua/rotate.lua")),
            revoke_family: with_revoke(include_str!("lua/revoke_family.lua")),
            gcra: Script::new(include_str!("lua/gcra.lua")),
        }
    }

    pub async fn load(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for script in [&self.redeem, &self.create_family, &self.rotate, &self.revoke_family, &self.gcra] {
            pipe.load_script(script).ignore();
        }
        pipe.query_async(conn).await
    }
}
