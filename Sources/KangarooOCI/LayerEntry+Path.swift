extension LayerEntry {
    /// The longest path component a layer entry may have (Linux NAME_MAX).
    public static let maxComponentLength = 255

    /// Cleans a path from a layer archive into a relative path under the
    /// image root: strips leading `/` and `./`, collapses `//` and `.`, and
    /// resolves `..` lexically.
    ///
    /// - Returns: the cleaned path, or `nil` when the path names the root
    ///   itself (`/`, `.`, `./`, `a/..`).
    /// - Throws: `.hostileEntry` when a `..` escapes the root, `.invalidLayer`
    ///   for an empty path, a NUL byte or a component longer than 255 bytes.
    public static func cleanPath(_ raw: String) throws(OCIError) -> String? {
        if raw.isEmpty {
            throw OCIError(.invalidLayer, "layer entry has an empty path")
        }
        var components: [Substring] = []
        for component in raw.split(separator: "/", omittingEmptySubsequences: true) {
            if component == "." { continue }
            if component == ".." {
                if components.isEmpty {
                    throw OCIError(.hostileEntry, "layer entry '\(raw)' escapes the image root")
                }
                components.removeLast()
                continue
            }
            if component.utf8.count > maxComponentLength {
                throw OCIError(.invalidLayer,
                               "layer entry '\(raw)' has a path component longer than \(maxComponentLength) bytes")
            }
            if component.utf8.contains(0) {
                throw OCIError(.invalidLayer, "layer entry '\(raw)' contains a NUL byte")
            }
            components.append(component)
        }
        if components.isEmpty { return nil }
        return components.joined(separator: "/")
    }
}
