// Package image stores container images and defines the one archive format
// that carries both images and exported containers.
//
// # Archive format
//
// An archive is a zstd-compressed tar stream. Its optional first entry is a
// regular file named MetaName ("muster.json") holding the caller's metadata
// verbatim. The file tree follows under "rootfs/": first the "rootfs/"
// directory itself, then every entry in lexical walk order, a directory
// before its contents. Entries are regular files, directories, symlinks and
// hard links, with mode (including setuid, setgid and sticky bits), numeric
// uid and gid, and mtime in whole seconds. There are no device nodes or
// fifos: LXC creates /dev itself.
//
// # Confinement
//
// Every archive is treated as hostile and read by one reader, ScanArchive,
// with one set of checks and Limits: ReadArchive extracts what it passes
// onto disk, Store.Put checks a blob with it while storing it, and
// in-memory drivers build their trees from it. An entry's parent must be a
// directory that the same archive created earlier; names with "..", "."
// or empty elements, names outside "rootfs/", overlong names, uids and
// gids outside 0..4294967294, sparse files, device nodes and repeated
// names are rejected, and a hard link must name a regular file extracted
// earlier. ReadArchive extracts only into its destination, through an
// os.Root, creates files exclusively (never opening one that exists) and
// never follows a symlink: a symlink's target is stored as is, so it may
// point anywhere, but nothing is ever written through one. Limits bound
// content bytes, entries, metadata, the decompressed stream and its ratio
// to the compressed size, against decompression bombs. Any failure removes
// everything the extraction created; errors about the archive have code
// errcode.InvalidArgument, and an error about a limit names it.
//
// # Store
//
// A Store keeps one server's images in a directory: blobs named by their
// sha256 digest and one JSON Manifest per image name. Put admits only
// archives within the store's limits (StoreOptions), and Unpack applies
// them again. BuildBase makes the offline base image from Debian's
// busybox-static, reproducibly.
//
// Ownership is restored only when running as root; otherwise extracted
// files belong to the caller. No other privilege is needed.
package image
