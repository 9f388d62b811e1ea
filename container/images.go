package container

import (
	"context"
	"fmt"
	"io"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// PutImage stores an image blob in the server's store under m.Name. If
// m.Digest is set the blob must match it. Storing an equal image again
// does nothing.
func (s *Server) PutImage(ctx context.Context, m *image.Manifest, blob io.Reader) (*image.Manifest, error) {
	if m == nil {
		return nil, errcode.New(errcode.InvalidArgument, "put image: nil manifest")
	}
	if err := names.Label(m.Name); err != nil {
		return nil, fmt.Errorf("put image %q: %w", m.Name, err)
	}
	if m.Digest != "" {
		if err := driver.ValidImageRef(m.Digest); err != nil {
			return nil, fmt.Errorf("put image %q: %w", m.Name, err)
		}
	}
	var out *image.Manifest
	err := s.images(ctx, "put", m.Name, func(im driver.Images) (err error) {
		out, err = im.PutImage(ctx, m, blob)
		return err
	})
	return out, err
}

// Image returns the manifest of an image by name or digest.
func (s *Server) Image(ctx context.Context, ref string) (*image.Manifest, error) {
	var out *image.Manifest
	err := s.imageRef(ctx, "get", ref, func(im driver.Images) (err error) {
		out, err = im.Image(ctx, ref)
		return err
	})
	return out, err
}

// Images lists the server's images, sorted by name.
func (s *Server) Images(ctx context.Context) ([]*image.Manifest, error) {
	var out []*image.Manifest
	err := s.images(ctx, "list", "", func(im driver.Images) (err error) {
		out, err = im.ListImages(ctx)
		return err
	})
	return out, err
}

// OpenImage streams an image's blob. The caller closes it.
func (s *Server) OpenImage(ctx context.Context, ref string) (*image.Manifest, io.ReadCloser, error) {
	var m *image.Manifest
	var rc io.ReadCloser
	err := s.imageRef(ctx, "open", ref, func(im driver.Images) (err error) {
		m, rc, err = im.OpenImage(ctx, ref)
		return err
	})
	return m, rc, err
}

// DeleteImage removes an image from the server's store.
func (s *Server) DeleteImage(ctx context.Context, ref string) error {
	return s.imageRef(ctx, "delete", ref, func(im driver.Images) error {
		return im.DeleteImage(ctx, ref)
	})
}

func (s *Server) imageRef(ctx context.Context, op, ref string, f func(driver.Images) error) error {
	if err := driver.ValidImageRef(ref); err != nil {
		return fmt.Errorf("%s image %q: %w", op, ref, err)
	}
	return s.images(ctx, op, ref, f)
}

func (s *Server) images(ctx context.Context, op, ref string, f func(driver.Images) error) error {
	im, ok := s.d.(driver.Images)
	if !ok {
		return errcode.New(errcode.Unimplemented, "%s image %q: the driver has no image store", op, ref)
	}
	if err := f(im); err != nil {
		return fmt.Errorf("%s image %q: %w", op, ref, err)
	}
	s.log.DebugContext(ctx, op+" image", "image", ref)
	return nil
}
