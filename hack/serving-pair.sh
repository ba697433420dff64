# serving_pair DIR: a throwaway CA (DIR/ca.crt) and an ECDSA P-256 serving
# pair for 127.0.0.1 (DIR/tls.crt, DIR/tls.key) it signed; rustls refuses a
# CA as the server's own certificate, so the two are kept apart. Sourced by
# the HTTPS benchmarks, which define `die`.
serving_pair() {
  local dir=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null || die "openssl cannot make the CA"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null || die "openssl cannot make the serving key"
  printf 'subjectAltName=IP:127.0.0.1\n' >"$dir/san.ext"
  openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 1 \
    -extfile "$dir/san.ext" -out "$dir/tls.crt" 2>/dev/null || die "openssl cannot sign the serving certificate"
}
