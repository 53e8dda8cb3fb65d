"""Choosing a key for a JWT and fetching JWKS from URLs: kid + kty selection, public-only registration, and the
cache of fetched JWKS (kept within Cache-Control, refetched on an unknown kid at most every few seconds)."""

import base64

import httpx
import pytest
import respx

from service.auth import jwks
from service.auth.jwks import KeyProblem, RemoteJwks, check_public_jwks, max_age, select_key, unverified
from tests.auth.conftest import run
from tests.auth.tokens import new_key, public_jwks

URL = "https://idp.example.org/certs"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_unverified_reads_header_and_claims_and_refuses_what_is_not_a_jws():
    def part(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    header, claims = unverified(part('{"alg":"ES384"}') + "." + part('{"iss":"x"}') + ".sig")
    assert header == {"alg": "ES384"} and claims == {"iss": "x"}
    for bad in ("", "a.b", "a.b.c.d", f"{part('[1]')}.{part('{}')}.s", "!!.??.s", f".{part('{}')}.s"):
        with pytest.raises(KeyProblem):
            unverified(bad)


def test_select_key_by_kid_and_key_type():
    ec, rsa = new_key("ES384", "one"), new_key("RS384", "one")
    keys = public_jwks(ec, rsa)["keys"]
    assert select_key(keys, "one", "ES384").key_type == "EC"
    assert select_key(keys, "one", "RS384").key_type == "RSA"
    with pytest.raises(KeyProblem, match="no EC key with kid 'two'"):
        select_key(keys, "two", "ES384")
    with pytest.raises(KeyProblem, match="no kid"):
        select_key(keys, None, "ES384")
    with pytest.raises(KeyProblem, match="several"):
        select_key(keys + [public_jwks(new_key("ES384", "one"))["keys"][0]], "one", "ES384")


def test_registered_jwks_must_be_public_keys_with_kids():
    ec = new_key("ES384", "a")
    assert len(check_public_jwks(public_jwks(ec))) == 1
    private = {"keys": [dict(ec.as_dict(private=True))]}
    no_kid = {"keys": [{k: v for k, v in ec.as_dict(private=False).items() if k != "kid"}]}
    symmetric = {"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}
    for bad, message in ((private, "private key material"), (no_kid, "no kid"), (symmetric, "private key material"),
                         ({"keys": []}, "at least one"), ([], "at least one"),
                         ({"keys": [{"kty": "EC", "kid": "x", "crv": "P-384", "x": "AA", "y": "AA"}]}, "not a valid"),
                         (public_jwks(ec, new_key("ES384", "a")), "two EC keys")):
        with pytest.raises(ValueError, match=message):
            check_public_jwks(bad)


def test_max_age_follows_cache_control():
    assert max_age("public, max-age=120") == 120
    assert max_age("max-age=0") == 0
    assert max_age("no-store") == 0 and max_age("no-cache, max-age=60") == 0
    assert max_age(None) == jwks.DEFAULT_MAX_AGE_S and max_age("public") == jwks.DEFAULT_MAX_AGE_S


@respx.mock
def test_fetched_jwks_is_cached_until_its_max_age():
    key = new_key("RS384", "k1")
    route = respx.get(URL).mock(return_value=httpx.Response(200, json=public_jwks(key),
                                                            headers={"Cache-Control": "max-age=60"}))
    clock = Clock()
    remote = RemoteJwks(clock=clock)
    assert run(remote.key(URL, "k1", "RS384")).kid == "k1"
    clock.now += 59
    run(remote.key(URL, "k1", "RS384"))
    assert route.call_count == 1
    clock.now += 2  # past max-age: fetched again
    run(remote.key(URL, "k1", "RS384"))
    assert route.call_count == 2


@respx.mock
def test_no_store_jwks_is_fetched_every_time():
    route = respx.get(URL).mock(return_value=httpx.Response(200, json=public_jwks(new_key("ES384", "k")),
                                                            headers={"Cache-Control": "no-store"}))
    remote = RemoteJwks(clock=Clock())
    run(remote.key(URL, "k", "ES384"))
    run(remote.key(URL, "k", "ES384"))
    assert route.call_count == 2


@respx.mock
def test_an_unknown_kid_refetches_but_not_more_often_than_the_minimum_interval():
    old, new = new_key("ES384", "old"), new_key("ES384", "new")
    route = respx.get(URL).mock(side_effect=[
        httpx.Response(200, json=public_jwks(old), headers={"Cache-Control": "max-age=3600"}),
        httpx.Response(200, json=public_jwks(old, new), headers={"Cache-Control": "max-age=3600"}),
        httpx.Response(200, json=public_jwks(old, new), headers={"Cache-Control": "max-age=3600"}),
    ])
    clock = Clock()
    remote = RemoteJwks(clock=clock, min_refetch_s=10)
    run(remote.key(URL, "old", "ES384"))
    with pytest.raises(KeyProblem):  # fetched a moment ago: no refetch for a made-up kid
        run(remote.key(URL, "new", "ES384"))
    assert route.call_count == 1
    clock.now += 11
    assert run(remote.key(URL, "new", "ES384")).kid == "new"  # rotated at the issuer: refetched, found
    assert route.call_count == 2
    with pytest.raises(KeyProblem):
        run(remote.key(URL, "bogus", "ES384"))
    assert route.call_count == 2


@respx.mock
def test_fetch_failures_are_key_problems_not_crashes():
    remote = RemoteJwks(clock=Clock())
    respx.get(URL).mock(return_value=httpx.Response(500))
    with pytest.raises(KeyProblem, match="HTTP 500"):
        run(remote.key(URL, "k", "ES384"))
    respx.get(URL).mock(return_value=httpx.Response(200, text="<html>"))
    with pytest.raises(KeyProblem, match="not JSON"):
        run(remote.key(URL, "k", "ES384"))
    respx.get(URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(KeyProblem, match="could not be fetched"):
        run(remote.key(URL, "k", "ES384"))
