package image_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"

	"github.com/musterkit/muster/container/image"
)

func ExampleReadArchive() {
	ctx := context.Background()
	work, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(work)
	src := filepath.Join(work, "src")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc/motd"), []byte("hello\n"), 0o644)
	os.Symlink("etc/motd", filepath.Join(src, "motd"))

	var archive bytes.Buffer
	if err := image.WriteArchive(ctx, &archive, src, []byte(`{"name":"demo"}`), nil); err != nil {
		log.Fatal(err)
	}
	dst := filepath.Join(work, "dst")
	meta, err := image.ReadArchive(ctx, &archive, dst, image.DefaultLimits(), nil)
	if err != nil {
		log.Fatal(err)
	}
	motd, _ := os.ReadFile(filepath.Join(dst, "motd"))
	fmt.Printf("meta %s, motd %q\n", meta, motd)
	// Output: meta {"name":"demo"}, motd "hello\n"
}

func ExampleScanArchive() {
	ctx := context.Background()
	src, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(src)
	os.WriteFile(filepath.Join(src, "motd"), []byte("hello\n"), 0o644)
	os.Symlink("motd", filepath.Join(src, "issue"))
	var archive bytes.Buffer
	if err := image.WriteArchive(ctx, &archive, src, nil, nil); err != nil {
		log.Fatal(err)
	}
	// An in-memory reader: every check and limit, nothing on disk.
	_, err = image.ScanArchive(ctx, &archive, int64(archive.Len()), image.DefaultLimits(), func(e *image.Entry, content io.Reader) error {
		data, err := io.ReadAll(content)
		fmt.Printf("%-7s %q %q %q\n", e.Type, e.Path, e.Target, data)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// dir     "" "" ""
	// symlink "issue" "motd" ""
	// file    "motd" "" "hello\n"
}

func ExampleStore() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "store")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := image.OpenStore(dir, nil)
	if err != nil {
		log.Fatal(err)
	}
	base, err := image.BuildBase(ctx, s, "base", nil) // needs Debian's busybox-static
	if err != nil {
		log.Fatal(err)
	}
	rootfs := filepath.Join(dir, "rootfs")
	if _, err := s.Unpack(ctx, base.Digest, rootfs); err != nil {
		log.Fatal(err)
	}
	target, _ := os.Readlink(filepath.Join(rootfs, "bin/sh"))
	fmt.Println(base.Name, "bin/sh ->", target)
	// Output: base bin/sh -> ../bin/busybox
}
