#!/bin/sh
# Makes a mesh CA and two sidecar identities for examples/mtls with openssl
# (Debian package `openssl`):
#   certs/ca.crt             the CA both sidecars trust
#   certs/a.crt, a.key       service A: spiffe://example.org/ns/shop/sa/a
#   certs/b.crt, b.key       service B: spiffe://example.org/ns/shop/sa/b, DNS b.shop.svc
# Usage: ./make-certs.sh [DIR]   (default: certs next to this script)
set -eu
dir=${1:-"$(dirname "$0")/certs"}
mkdir -p "$dir"
cd "$dir"

# The CA: CA:TRUE, allowed to sign certificates.
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca.key -out ca.crt -days 365 -subj "/CN=kaname example mesh CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# A leaf per sidecar, signed by the CA. A leaf must be CA:FALSE: rustls
# refuses a CA certificate served as a leaf (CaUsedAsEndEntity).
leaf() {
  name=$1 san=$2
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "subjectAltName=$san" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out "$name.crt" -days 90 -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
leaf a "URI:spiffe://example.org/ns/shop/sa/a"
leaf b "URI:spiffe://example.org/ns/shop/sa/b,DNS:b.shop.svc"
rm -f ca.srl
chmod 600 ./*.key
echo "made $dir: ca.crt a.crt a.key b.crt b.key"
