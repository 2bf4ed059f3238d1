//! Who is calling: passwords ([`password`]), access tokens ([`tokens`]),
//! API keys and their encrypted secrets ([`keys`]), and the middleware that
//! turns a request's credentials into an [`authn::AuthUser`] ([`authn`]).

pub mod authn;
pub mod keys;
pub mod password;
pub mod sessions;
pub mod tokens;
pub mod totp;
