import SystemPackage

/// Where an image comes from or goes to, as written on the command line:
/// - `oci:DIR[:TAG]`: an OCI image layout directory (tag defaults to `latest`);
/// - `docker://REF` or a reference whose first component is a host
///   (has '.' or ':' or is `localhost`), e.g. `127.0.0.1:5000/debian:12`: a registry;
/// - anything else (`sample:latest`, `debian-python`): a name in the local store.
public enum ImageLocation: Sendable, Hashable {
    case registry(Reference)
    case ociLayout(path: FilePath, tag: String)
    case store(name: String)

    public static func parse(_ string: String) throws(OCIError) -> ImageLocation {
        if string.hasPrefix("oci:") {
            let rest = string.dropFirst(4)
            guard !rest.isEmpty else {
                throw OCIError(.invalidReference, "image location '\(string)' names no directory (expected oci:DIR[:TAG])")
            }
            var dir = rest
            var tag = Reference.defaultTag
            if let colon = rest.lastIndex(of: ":"), !rest[rest.index(after: colon)...].contains("/") {
                tag = String(rest[rest.index(after: colon)...])
                dir = rest[..<colon]
                guard !tag.isEmpty else {
                    throw OCIError(.invalidReference, "image location '\(string)' has an empty tag after ':'")
                }
                guard !dir.isEmpty else {
                    throw OCIError(.invalidReference, "image location '\(string)' names no directory (expected oci:DIR[:TAG])")
                }
            }
            return .ociLayout(path: FilePath(String(dir)), tag: tag)
        }
        if string.hasPrefix("docker://") {
            return .registry(try Reference(parsing: String(string.dropFirst("docker://".count))))
        }
        if let slash = string.firstIndex(of: "/"), Reference.looksLikeHost(string[..<slash]) {
            return .registry(try Reference(parsing: string))
        }
        guard !string.isEmpty else {
            throw OCIError(.invalidReference, "image location is empty")
        }
        guard !string.contains(where: { $0.isWhitespace || $0 == "\0" }) else {
            throw OCIError(.invalidReference, "image name '\(string)' contains whitespace")
        }
        return .store(name: string)
    }
}
