/**
 * Which cached URLs may be served without asking the origin again.
 *
 * Package repositories name their payload by content or by version: a .deb, .rpm or .apk at a given
 * URL never changes (a new version gets a new file name), and `by-hash/` paths and Fedora's hashed
 * repodata files are named by their digest. Those are served from the cache as they are. Everything
 * else (InRelease, Release, Packages*, Sources*, Translation-*, *.diff/Index, repomd.xml, APKINDEX,
 * mirror lists and any URL we do not recognise) is revalidated with a conditional GET, which costs a
 * round trip and no body bytes when it has not changed. Erring on "revalidate" is what keeps the cache
 * from ever serving an outdated index.
 */

/** File names of package payloads (Debian, RPM, Alpine, and source packages' pieces). */
const PACKAGE_FILE = /\.(deb|udeb|ddeb|rpm|drpm|apk|dsc|orig\.tar\.[a-z0-9]+|debian\.tar\.[a-z0-9]+)$/i;
/** Index files keep these names while their content changes; APKINDEX.tar.gz ends like a package. */
const INDEX_FILE = /(^|\/)(InRelease|Release(\.gpg)?|Packages[^/]*|Sources[^/]*|Contents-[^/]*|Translation-[^/]*|Index|repomd\.xml[^/]*|APKINDEX\.tar\.gz)$/;
/** Content-addressed paths: apt's by-hash, dnf's `repodata/<sha256>-primary.xml.zst` and the like. */
const BY_DIGEST = /\/by-hash\/[A-Za-z0-9]+\/[0-9a-f]{32,}$|\/repodata\/[0-9a-f]{32,}-[^/]+$/;

export type UrlClass = "immutable" | "revalidate";

export function classifyUrl(url: string): UrlClass {
  let p: string;
  try {
    p = new URL(url).pathname;
  } catch {
    return "revalidate";
  }
  if (BY_DIGEST.test(p)) return "immutable";
  if (INDEX_FILE.test(p)) return "revalidate";
  return PACKAGE_FILE.test(p) ? "immutable" : "revalidate";
}
