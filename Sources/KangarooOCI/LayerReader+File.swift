import SystemPackage

extension LayerReader {
    /// Opens the layer archive at `path`. `.auto` detects gzip, zstd or no compression.
    public convenience init(path: FilePath, compression: Compression = .auto) throws(OCIError) {
        try self.init(pathString: path.string, compression: compression)
    }
}
