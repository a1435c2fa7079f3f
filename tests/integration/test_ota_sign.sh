#!/usr/bin/env bash
# outpost ota keygen|sign|verify against the real minisign, both ways:
# what `minisign -S` signs (prehashed, legacy, with an unencrypted or a
# scrypt-encrypted key) `outpost ota verify` accepts and what `outpost ota
# sign` signs `minisign -V` accepts; a modified file, a tampered trusted
# comment, a wrong key and malformed files are refused with one line on
# stderr; usage errors exit 2.
set -uo pipefail
bin=${OUTPOST_BIN:?}
if ! command -v minisign >/dev/null; then
  echo "minisign is not installed: skipped"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export HOME=$work # minisign and outpost default paths stay inside the sandbox
unset OUTPOST_OTA_PASSWORD MINISIGN_CONFIG_DIR
cd "$work" || exit 1
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }

# expect CODE WHAT NEEDLE cmd...: exit code CODE, one line on stderr
# containing NEEDLE (or nothing on stderr when CODE is 0).
expect() {
  local code=$1 what=$2 needle=$3; shift 3
  "$@" >"$work/out" 2>"$work/err"
  local rc=$? lines; lines=$(wc -l <"$work/err")
  if [ "$rc" -ne "$code" ]; then bad "$what: exit $rc, wanted $code: $(cat "$work/err")"; return; fi
  if [ "$code" -ne 0 ] && { [ "$lines" -ne 1 ] || ! grep -qF -- "$needle" "$work/err"; }; then
    bad "$what: stderr ($lines lines) lacks '$needle': $(cat "$work/err")"; return
  fi
  if [ "$code" -ne 0 ]; then ok "$what ($(cat "$work/err"))"; else ok "$what"; fi
}

printf 'model weights, version 1\n' >data
head -c 20000000 /dev/urandom >big.bin # several hash chunks, odd length tail

# ---- minisign signs, outpost verifies ------------------------------------------------
minisign -G -W -p ms.pub -s ms.key >/dev/null || { bad "minisign -G -W"; exit 1; }
minisign -S -s ms.key -m data -t 'release 7' >/dev/null || bad "minisign -S"
expect 0 "outpost verifies a minisign (prehashed) signature" "" "$bin" ota verify -p ms.pub -m data
grep -qx 'Signature and comment signature verified' out && grep -qx 'Trusted comment: release 7' out &&
  ok "verify prints minisign's two lines" || bad "verify output: $(cat out)"
pub_b64=$(sed -n 2p ms.pub)
expect 0 "verify with -P (public key as base64)" "" "$bin" ota verify -P "$pub_b64" -m data
"$bin" ota verify -Q -p ms.pub -m data >out 2>&1
[ "$(cat out)" == "release 7" ] && ok "-Q prints only the trusted comment" || bad "-Q: $(cat out)"
"$bin" ota verify -q -p ms.pub -m data >out 2>&1
[ ! -s out ] && ok "-q prints nothing" || bad "-q: $(cat out)"

minisign -S -s ms.key -m big.bin -x big.sig >/dev/null
expect 0 "outpost verifies minisign's signature of a 20 MB file (-x)" "" \
  "$bin" ota verify -p ms.pub -m big.bin -x big.sig

minisign -S -l -s ms.key -m data -x data.legacy >/dev/null
expect 0 "outpost verifies a legacy (-l) minisign signature" "" \
  "$bin" ota verify -p ms.pub -m data -x data.legacy
expect 1 "-H refuses the legacy signature" "legacy (Ed) signature refused" \
  "$bin" ota verify -H -p ms.pub -m data -x data.legacy

cp data data.orig
printf 'model weights, version 2\n' >data
expect 1 "outpost rejects a modified file" "signature verification failed" \
  "$bin" ota verify -p ms.pub -m data
expect 1 "outpost rejects a modified file (legacy signature)" "signature verification failed" \
  "$bin" ota verify -p ms.pub -m data -x data.legacy
cp data.orig data

sed 's/^trusted comment: release 7$/trusted comment: release 8/' data.minisig >tampered.sig
expect 1 "outpost rejects a tampered trusted comment" "trusted comment does not match" \
  "$bin" ota verify -p ms.pub -m data -x tampered.sig
minisign -V -p ms.pub -m data -x tampered.sig >/dev/null 2>&1 &&
  bad "minisign accepted the tampered comment too?" || ok "(minisign rejects it as well)"

# ---- outpost signs, minisign verifies ----------------------------------------------------
expect 0 "outpost ota keygen" "" "$bin" ota keygen -p o.pub -s o.key
[ "$(stat -c %a o.key)" == 600 ] && ok "the secret key is mode 0600" || bad "o.key mode $(stat -c %a o.key)"
cp o.pub o.pub.orig
expect 1 "keygen keeps existing keys without -f" "already exists" "$bin" ota keygen -p o.pub -s o.key
cmp -s o.pub o.pub.orig && ok "the old public key is untouched" || bad "o.pub changed"
expect 0 "keygen -f overwrites" "" "$bin" ota keygen -f -q -p o.pub -s o.key
cmp -s o.pub o.pub.orig && bad "keygen -f wrote the same key" || ok "keygen -f made a new key"

expect 0 "outpost ota sign (prehashed)" "" "$bin" ota sign -s o.key -m data -t 'outpost release 9'
sed -n 2p data.minisig | base64 -d | head -c 2 | grep -q ED && ok "the signature is 'ED' (prehashed)" ||
  bad "signature algorithm: $(sed -n 2p data.minisig | base64 -d | head -c 2)"
minisign -V -p o.pub -m data >out 2>&1 && grep -q 'outpost release 9' out &&
  ok "minisign -V accepts outpost's signature and trusted comment" || bad "minisign -V: $(cat out)"
minisign -V -H -p o.pub -m data >/dev/null 2>&1 && ok "minisign -V -H (prehashed required) accepts it" ||
  bad "minisign -V -H refused"
printf 'x' >>data
minisign -V -p o.pub -m data >/dev/null 2>&1 && bad "minisign accepted a modified file" ||
  ok "minisign -V rejects the modified file"
cp data.orig data

expect 0 "outpost signs a 20 MB file" "" "$bin" ota sign -s o.key -m big.bin
minisign -V -p o.pub -m big.bin >/dev/null 2>&1 && ok "minisign -V accepts it" || bad "minisign -V big.bin"

expect 0 "outpost ota sign -l (legacy)" "" "$bin" ota sign -l -s o.key -m data -x data.l
minisign -V -p o.pub -m data -x data.l >/dev/null 2>&1 && ok "minisign -V accepts outpost's legacy signature" ||
  bad "minisign -V legacy"
minisign -V -H -p o.pub -m data -x data.l >/dev/null 2>&1 && bad "minisign -H accepted legacy" ||
  ok "(minisign -H refuses it, as it should)"

cp data data2
expect 0 "sign several files (-m A B)" "" "$bin" ota sign -s o.key -m data data2
minisign -V -p o.pub -m data2 >/dev/null 2>&1 && ok "minisign verifies the second file" || bad "data2"
expect 0 "outpost signs with minisign's -W secret key (zero checksum)" "" \
  "$bin" ota sign -s ms.key -m data -x data.ms
minisign -V -p ms.pub -m data -x data.ms >/dev/null 2>&1 && ok "minisign accepts it" || bad "ms.key signature"

# ---- an encrypted (scrypt, 1 GiB) minisign key -----------------------------------------
printf 'correct horse\ncorrect horse\n' | minisign -G -p enc.pub -s enc.key >/dev/null 2>&1 ||
  bad "minisign -G with a password"
expect 1 "an encrypted key without a password" "no password was given" \
  "$bin" ota sign -s enc.key -m data -x data.enc
printf 'correct horse\n' >pw.txt
expect 0 "outpost signs with an encrypted minisign key (--password-file)" "" \
  "$bin" ota sign -s enc.key --password-file pw.txt -m data -x data.enc
minisign -V -p enc.pub -m data -x data.enc >/dev/null 2>&1 && ok "minisign accepts it" ||
  bad "minisign -V with enc.pub"

# ---- refusals --------------------------------------------------------------------------------
expect 1 "wrong public key" "does not match the public key's" "$bin" ota verify -p o.pub -m data -x data.ms
printf 'untrusted comment: x\nRWT/not+a+key\n' >junk.pub
expect 1 "malformed public key file" "junk.pub: line 2 (public key)" "$bin" ota verify -p junk.pub -m data
head -n 3 data.minisig >cut.sig
expect 1 "truncated signature file" "cut.sig: minisign signature file ends before line 4" \
  "$bin" ota verify -p o.pub -m data -x cut.sig
expect 1 "missing signature file" "data.none: cannot open" "$bin" ota verify -p o.pub -m data -x data.none
expect 1 "garbage secret key" "junk.pub: line 2 (secret key)" "$bin" ota sign -s junk.pub -m data -x x.sig
expect 1 "missing file to sign" "nothing: cannot open" "$bin" ota sign -s o.key -m nothing

expect 2 "no subcommand" "expected 'keygen', 'sign', 'verify'" "$bin" ota
expect 2 "unknown subcommand" "unknown subcommand 'frob'" "$bin" ota frob
expect 2 "verify without -m" "-m FILE is required" "$bin" ota verify -p o.pub
expect 2 "verify with -p and -P" "not both" "$bin" ota verify -p o.pub -P "$pub_b64" -m data
expect 2 "unknown option" "unknown option '-z'" "$bin" ota sign -z -m data
expect 2 "-x with two files" "-x SIGFILE names one signature" "$bin" ota sign -s o.key -x s.sig -m data data2
expect 2 "a multi-line trusted comment" "must be one line" "$bin" ota sign -s o.key -m data -t $'a\nb'
"$bin" ota --help >out 2>&1 && grep -q 'usage: outpost ota keygen' out && ok "ota --help" || bad "ota --help"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
