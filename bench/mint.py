#!/usr/bin/env python3
"""Mints the benchmark's tokens with the standard library and openssl:
an HS256 token (the HAProxy peer's secret, issuer and audience), an RS256
and an ES256 token, and the JWKS with both public keys. Usage: mint.py OUTDIR"""
import base64, hashlib, hmac, json, os, re, subprocess, sys, time

out = sys.argv[1]
SECRET = os.environ.get("JWT_SECRET", "bench-shared-secret-0123456789abcdef")
ISS, AUD = "bench-issuer", "bench-api"

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

claims = {"iss": ISS, "aud": AUD, "sub": "bench-user", "exp": int(time.time()) + 86400}

def signing_input(header):
    return b64(json.dumps(header, separators=(",", ":")).encode()) + "." + b64(
        json.dumps(claims, separators=(",", ":")).encode())

hs_in = signing_input({"alg": "HS256", "typ": "JWT"})
hs = hs_in + "." + b64(hmac.new(SECRET.encode(), hs_in.encode(), hashlib.sha256).digest())
open(os.path.join(out, "hs256.jwt"), "w").write(hs)

key = os.path.join(out, "rsa.pem")
subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
rs_in = signing_input({"alg": "RS256", "typ": "JWT", "kid": "bench"})
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=rs_in.encode(),
                     check=True, capture_output=True).stdout
open(os.path.join(out, "rs256.jwt"), "w").write(rs_in + "." + b64(sig))
text = subprocess.run(["openssl", "rsa", "-in", key, "-noout", "-text"], check=True,
                      capture_output=True, text=True).stdout
mod = re.search(r"modulus:\s*\n((?:\s+[0-9a-f:]+\n)+)", text).group(1)
n = bytes.fromhex(re.sub(r"[\s:]", "", mod)).lstrip(b"\x00")
rsa_jwk = {"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
           "n": b64(n), "e": b64((65537).to_bytes(3, "big"))}

def der_ecdsa_to_jose(der: bytes, size: int = 32) -> bytes:
    """openssl signs ECDSA as DER SEQUENCE { INTEGER r, INTEGER s }; JWS
    wants r || s, each left-padded to the curve size (RFC 7518 3.4)."""
    assert der[0] == 0x30, "not a DER sequence"
    i = 3 if der[1] & 0x80 else 2  # a P-256 signature is < 128 bytes
    out = b""
    for _ in range(2):
        assert der[i] == 0x02, "not a DER integer"
        length = der[i + 1]
        value = der[i + 2:i + 2 + length].lstrip(b"\x00")
        assert len(value) <= size, "integer longer than the curve"
        out += value.rjust(size, b"\x00")
        i += 2 + length
    return out

ec_key = os.path.join(out, "ec.pem")
subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                "-out", ec_key], check=True, capture_output=True)
es_in = signing_input({"alg": "ES256", "typ": "JWT", "kid": "bench-ec"})
der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", ec_key], input=es_in.encode(),
                     check=True, capture_output=True).stdout
open(os.path.join(out, "es256.jwt"), "w").write(es_in + "." + b64(der_ecdsa_to_jose(der)))
# The DER SubjectPublicKeyInfo of a P-256 key ends with the point 04 || x || y.
spki = subprocess.run(["openssl", "ec", "-in", ec_key, "-pubout", "-outform", "DER"],
                      check=True, capture_output=True).stdout
point = spki[-65:]
assert point[0] == 4, "not an uncompressed P-256 point"
ec_jwk = {"kty": "EC", "crv": "P-256", "kid": "bench-ec", "alg": "ES256", "use": "sig",
          "x": b64(point[1:33]), "y": b64(point[33:])}
jwks = {"keys": [rsa_jwk, ec_jwk]}
open(os.path.join(out, "jwks.json"), "w").write(json.dumps(jwks))
