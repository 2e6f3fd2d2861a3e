#!/usr/bin/env python3
"""Mints the benchmark's tokens with the standard library and openssl:
an HS256 token (the HAProxy peer's secret, issuer and audience) and an
RS256 token with its JWKS. Usage: mint.py OUTDIR"""
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
jwks = {"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
                  "n": b64(n), "e": b64((65537).to_bytes(3, "big"))}]}
open(os.path.join(out, "jwks.json"), "w").write(json.dumps(jwks))
