"""Authenticating CDS clients, as CDS Hooks 2.0 "Trusting CDS Clients" says.

Every call carries ``Authorization: Bearer <JWT>``, signed by the CDS client
(the EHR) with an asymmetric key. :class:`ClientAuthenticator` accepts it
only when

* ``alg`` is asymmetric and one the issuer may use (``none`` and HMAC are
  refused before any key is looked at), and the key found is of that kind
  (an RSA key for RS/PS, a P-384 key for ES384, ...);
* the header has no ``crit``: RFC 7515 §4.1.11 makes a token invalid when
  ``crit`` lists an extension the recipient does not understand, and the
  service understands none (the header is read here, so this does not
  depend on the PyJWT version);
* ``iss`` is a configured issuer (exact match);
* the key comes from that issuer's configuration: a key or JWK Set given in
  the configuration, its ``jwks_url``, or the token's ``jku`` header when
  that URL is on the issuer's ``jku`` allowlist (any other ``jku`` is refused
  without being fetched);
* the signature verifies (PyJWT), ``aud`` is the service's public URL plus
  the path called, ``exp`` is in the future but at most the policy's
  lifetime away, ``iat`` is not in the future, ``exp - iat`` is within the
  lifetime, and ``jti`` has not been seen from this issuer while its token
  was valid (a bounded replay cache, entries expiring with their tokens).

A refusal raises :class:`AuthenticationFailed`, whose ``reason`` is for the
service log only; callers answer every refusal with one generic message.
JWK Sets are fetched with httpx (timeout, size cap, no redirects) and cached;
an unknown ``kid`` refetches a set at most once per ``min_refresh_seconds``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import heapq
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cdss.errors import AuthenticationFailed, ReplayCacheFull
from cdss.service._config import (
    ASYMMETRIC_ALGORITHMS,
    IssuerConfig,
    JwksPolicy,
    ServiceConfig,
)

__all__ = [
    "ClientAuthenticator",
    "JwksCache",
    "ReplayCache",
    "VerificationKey",
    "key_fits",
    "keys_from_jwks",
    "load_static_keys",
]

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_MIN_RSA_BITS = 2048
_MAX_JTI = 256


# --------------------------------------------------------------------------- #
# Keys
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class VerificationKey:
    """A public key of a CDS client: its ``kid`` and ``alg`` when its JWK names them."""

    key: Any
    kid: str | None = None
    alg: str | None = None


def key_fits(alg: str, key: Any) -> bool:
    """Whether ``key`` is a public key of the kind ``alg`` signs with (RSA of at
    least 2048 bits for RS/PS, the algorithm's curve for ES, Ed25519/Ed448 for
    EdDSA)."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= _MIN_RSA_BITS
    if alg in _CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES[alg])
    if alg == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False


def _public(key: Any) -> Any:
    if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey,
                        ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return key.public_key()
    return key


def keys_from_jwks(data: Any) -> tuple[VerificationKey, ...]:
    """The signature keys of a JWK Set (``{"keys": [...]}``): RSA, EC and OKP
    keys whose ``use`` is ``sig`` or absent; symmetric (``oct``) keys and keys
    with an unknown ``alg`` are skipped. ``ValueError`` when none is usable."""
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise ValueError("a JWK Set must be a JSON object with a 'keys' list")
    out: list[VerificationKey] = []
    for jwk in data["keys"]:
        if not isinstance(jwk, Mapping) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        alg = jwk.get("alg")
        if alg is not None and alg not in ASYMMETRIC_ALGORITHMS:
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        try:
            key = _public(jwt.PyJWK(dict(jwk), algorithm=alg).key)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        out.append(VerificationKey(key, kid, alg))
    if not out:
        raise ValueError("the JWK Set holds no usable signature key (RSA, EC or OKP)")
    return tuple(out)


def key_from_pem(data: bytes) -> VerificationKey:
    """A public key from PEM text: a public key or an X.509 certificate."""
    key: Any
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError:
        raise ValueError("not a PEM public key or certificate") from None
    if not any(key_fits(alg, key) for alg in ASYMMETRIC_ALGORITHMS):
        raise ValueError("the PEM key is not an RSA (2048 bits or more), EC or EdDSA key")
    return VerificationKey(key)


def load_static_keys(issuer: IssuerConfig) -> tuple[VerificationKey, ...] | None:
    """The keys an issuer's configuration gives directly (inline JWK Set,
    JWK Set file or PEM file), or ``None`` when they come from a URL.
    ``ValueError`` (naming the file) when they cannot be used."""
    if issuer.jwks is not None:
        return keys_from_jwks(issuer.jwks)
    for file in (issuer.jwks_file, issuer.public_key_file):
        if file is None:
            continue
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {file}: {exc.strerror}") from None
        try:
            if file == issuer.public_key_file:
                keys: tuple[VerificationKey, ...] = (key_from_pem(data),)
            else:
                keys = keys_from_jwks(orjson.loads(data))
        except (ValueError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"{file}: {exc}") from None
        fitting = [k for k in keys if any(key_fits(a, k.key) for a in issuer.algorithms)]
        if not fitting:
            raise ValueError(f"{file}: no key fits the algorithms "
                             f"{', '.join(issuer.algorithms)}")
        return keys
    return None


# --------------------------------------------------------------------------- #
# Replay cache and JWK Set cache
# --------------------------------------------------------------------------- #
class ReplayCache:
    """``(issuer, jti)`` pairs seen, each kept until its token expires.

    Bounded: when ``max_entries`` unexpired pairs are held, :meth:`remember`
    raises :class:`ReplayCacheFull` instead of evicting one (an evicted ``jti``
    could be replayed). Used from the event loop only.
    """

    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._until: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._until)

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            until, key = heapq.heappop(self._heap)
            if self._until.get(key) == until:
                del self._until[key]

    def remember(self, key: tuple[str, str], until: float) -> bool:
        """Record ``key`` until ``until`` (epoch seconds); ``False`` when it is
        already held (a replay)."""
        now = self._clock()
        self._purge(now)
        if key in self._until:
            return False
        if len(self._until) >= self.max_entries:
            raise ReplayCacheFull
        self._until[key] = until
        heapq.heappush(self._heap, (until, key))
        return True


@dataclass
class _CachedSet:
    keys: tuple[VerificationKey, ...]
    fetched: float
    attempted: float


class JwksCache:
    """JWK Sets fetched from URLs the configuration allows, cached.

    A set is reused for ``cache_seconds``; a ``refresh`` (an unknown ``kid``)
    refetches it at most once per ``min_refresh_seconds``, so that tokens with
    made-up ``kid`` values cannot make the service hammer a client's server.
    A failed fetch keeps the previous keys. Fetches do not follow redirects,
    time out, and stop reading past ``max_bytes``.
    """

    def __init__(self, policy: JwksPolicy, http: Callable[[], httpx.AsyncClient], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._http = http
        self._clock = clock
        self._sets: dict[str, _CachedSet] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def keys(self, url: str, *, refresh: bool = False) -> tuple[VerificationKey, ...]:
        """The keys at ``url`` (fetched when not cached, stale, or ``refresh``
        allows). :class:`AuthenticationFailed` when none can be had."""
        cached = self._usable(url, refresh)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            cached = self._usable(url, refresh)  # fetched while this call waited
            if cached is not None:
                return cached
            entry = self._sets.get(url)
            now = self._clock()
            try:
                keys = await self._fetch(url)
            except AuthenticationFailed:
                if entry is not None:
                    entry.attempted = now
                    if entry.keys:
                        return entry.keys
                else:
                    self._sets[url] = _CachedSet((), float("-inf"), now)
                raise
            self._sets[url] = _CachedSet(keys, now, now)
            return keys

    def _usable(self, url: str, refresh: bool) -> tuple[VerificationKey, ...] | None:
        entry = self._sets.get(url)
        if entry is None:
            return None
        now = self._clock()
        if now - entry.attempted < self.policy.min_refresh_seconds:
            if entry.keys:
                return entry.keys
            raise AuthenticationFailed("JWK Set unavailable (recent fetch failed)")
        if not refresh and entry.keys and now - entry.fetched < self.policy.cache_seconds:
            return entry.keys
        return None

    async def _fetch(self, url: str) -> tuple[VerificationKey, ...]:
        cap = self.policy.max_bytes
        body = bytearray()
        try:
            async with self._http().stream(
                    "GET", url, headers={"Accept": "application/json"},
                    timeout=self.policy.timeout_seconds) as response:
                if response.status_code != 200:
                    raise AuthenticationFailed(
                        f"JWK Set fetch answered {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise AuthenticationFailed("JWK Set larger than the limit")
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > cap:
                        raise AuthenticationFailed("JWK Set larger than the limit")
        except httpx.HTTPError as exc:
            raise AuthenticationFailed(f"JWK Set fetch failed: {type(exc).__name__}") from None
        try:
            return keys_from_jwks(orjson.loads(bytes(body)))
        except (ValueError, orjson.JSONDecodeError):
            raise AuthenticationFailed("JWK Set unusable") from None


# --------------------------------------------------------------------------- #
# The authenticator
# --------------------------------------------------------------------------- #
_PYJWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token issued in the future"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidIssuedAtError, "bad iat"),
    (jwt.InvalidAlgorithmError, "algorithm not accepted"),
    (jwt.InvalidKeyError, "key unusable for the algorithm"),
    (jwt.DecodeError, "malformed token"),
)


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header of ``token`` (a string :data:`_TOKEN` matches), not yet
    verified, read here rather than by PyJWT, whose checks vary by version."""
    segment = token.split(".", 1)[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, orjson.JSONDecodeError):
        raise AuthenticationFailed("malformed token") from None
    if not isinstance(header, dict):
        raise AuthenticationFailed("malformed token")
    return header


def _check_crit(header: Mapping[str, Any]) -> None:
    """Refuse a ``crit`` header (RFC 7515 §4.1.11): a well-formed one lists
    extensions the service would have to understand, and it understands none."""
    if "crit" not in header:
        return
    names = header["crit"] if isinstance(header["crit"], list) else []
    # a non-empty list of distinct names of parameters present in the header
    if not names or not all(isinstance(n, str) and n in header for n in names) \
            or len(set(names)) != len(names):
        raise AuthenticationFailed("malformed crit header")
    raise AuthenticationFailed("crit names an extension the service does not understand")


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim}"
    for kind, reason in _PYJWT_REASONS:
        if isinstance(exc, kind):
            return reason
    return f"invalid token ({type(exc).__name__})"


class ClientAuthenticator:
    """Checks the JWT of every call against ``config`` (see the module doc).

    ``http`` returns the httpx client JWK Sets are fetched with; ``clock``
    gives epoch seconds for the lifetime checks and the replay cache.
    """

    def __init__(self, config: ServiceConfig, http: Callable[[], httpx.AsyncClient], *,
                 clock: Callable[[], float] = time.time,
                 shared_replay: Callable[[tuple[str, str], float, float],
                                         Awaitable[bool]] | None = None) -> None:
        self.config = config
        self._clock = clock
        self._static = {item.issuer: load_static_keys(item) for item in config.issuers}
        self.replay = ReplayCache(config.token.replay_cache_size, clock=clock)
        #: The store's replay check (``key, until, now -> first seen``), when the
        #: service has a store: a jti is then refused by every process sharing it.
        self.shared_replay = shared_replay
        self.jwks = JwksCache(config.jwks, http)

    def audience(self, path: str) -> str:
        """The ``aud`` a call to ``path`` must carry: the public URL plus the path."""
        return self.config.public_url + "/" + path.strip("/")

    def _token(self, authorization: str | None) -> str:
        if not authorization:
            raise AuthenticationFailed("no bearer token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("not a bearer token")
        if len(token) > self.config.token.max_token_chars:
            raise AuthenticationFailed("token too long")
        if not _TOKEN.match(token):
            raise AuthenticationFailed("malformed token")
        return token

    async def _keys(self, issuer: IssuerConfig, header: Mapping[str, Any],
                    refresh: bool) -> tuple[tuple[VerificationKey, ...], bool]:
        """The issuer's candidate keys, and whether they came from a URL."""
        jku = header.get("jku")
        if jku is not None:
            allowed = set(issuer.jku) | ({issuer.jwks_url} if issuer.jwks_url else set())
            if not isinstance(jku, str) or jku not in allowed:
                raise AuthenticationFailed("jku not on the issuer's allowlist",
                                           issuer=issuer.issuer)
            return await self.jwks.keys(jku, refresh=refresh), True
        if issuer.jwks_url is not None:
            return await self.jwks.keys(issuer.jwks_url, refresh=refresh), True
        static = self._static[issuer.issuer]
        if static is None:
            raise AuthenticationFailed("token names no jku and the issuer has no other keys",
                                       issuer=issuer.issuer)
        return static, False

    @staticmethod
    def _matching(keys: tuple[VerificationKey, ...], alg: str,
                  kid: str | None) -> list[VerificationKey]:
        return [k for k in keys
                if (kid is None or k.kid is None or k.kid == kid)
                and (k.alg is None or k.alg == alg) and key_fits(alg, k.key)]

    async def authenticate(self, authorization: str | None, path: str) -> IssuerConfig:
        """The trusted issuer whose valid JWT ``authorization`` carries for a
        call to ``path``; :class:`AuthenticationFailed` otherwise,
        :class:`ReplayCacheFull` when no more tokens can be remembered."""
        token = self._token(authorization)
        header = _unverified_header(token)
        _check_crit(header)
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthenticationFailed("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
            raise AuthenticationFailed("algorithm not accepted (none or symmetric)")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise AuthenticationFailed("typ is not JWT")
        iss = claims.get("iss")
        issuer = self.config.issuer(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthenticationFailed("issuer not trusted")
        name = issuer.issuer
        if alg not in issuer.algorithms:
            raise AuthenticationFailed("algorithm not accepted for this issuer", issuer=name)
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        keys, remote = await self._keys(issuer, header, refresh=False)
        candidates = self._matching(keys, alg, kid)
        if not candidates and remote:
            keys, _ = await self._keys(issuer, header, refresh=True)
            candidates = self._matching(keys, alg, kid)
        if not candidates:
            raise AuthenticationFailed("no key of the issuer matches kid and alg", issuer=name)
        policy = self.config.token
        verified: dict[str, Any] | None = None
        failure = "bad signature"
        for candidate in candidates:
            try:
                verified = jwt.decode(
                    token, candidate.key, algorithms=[alg], audience=self.audience(path),
                    issuer=name, leeway=policy.leeway_seconds,
                    options={"require": ["iss", "aud", "exp", "iat", "jti"],
                             "verify_signature": True, "verify_exp": True,
                             "verify_iat": True, "verify_aud": True, "verify_iss": True})
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                failure = _reason(exc)
                break
        if verified is None:
            raise AuthenticationFailed(failure, issuer=name)
        exp, iat, jti = verified["exp"], verified["iat"], verified["jti"]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (exp, iat)):
            raise AuthenticationFailed("exp or iat is not a number", issuer=name)
        if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI:
            raise AuthenticationFailed("jti is not a string of 1-256 characters", issuer=name)
        now = self._clock()
        longest = policy.max_lifetime_seconds + policy.leeway_seconds
        if exp > now + longest or exp - iat > longest:
            raise AuthenticationFailed("token lifetime longer than allowed", issuer=name)
        until = float(exp) + policy.leeway_seconds
        if self.shared_replay is not None:
            first = await self.shared_replay((name, jti), until, now)  # StoreError: fail closed
        else:
            first = self.replay.remember((name, jti), until)
        if not first:
            raise AuthenticationFailed("jti replayed", issuer=name)
        return issuer
