"""Writes small replicas of the multi-task PASCAL-Context (PASCAL_MT) and NYUD-v2 (NYUD_MT)
layouts, as distributed for ASTMT / MTI-Net / InvPT / MTLoRA, and the labels their loaders
produce from them, computed here with numpy the way those loaders do. The Rust tests
(tests/datasets.rs) convert the replicas with `vmt-hub data import` and compare every pixel
with these answers; the reader of `.mat` files is tested on the files of `mat/`.

    python reference/make_dataset_replicas.py tests/fixtures

needs numpy, scipy and pillow (reference/requirements.txt). The output is committed, so the
tests need none of them.

Upstream behaviour reproduced in `expected/` (see docs/dataset.md for the references):
- semseg (PASCAL): the PNG from semseg/VOC12 if it exists, else semseg/pascal-context.
- human_parts: from human_parts/<id>.mat (`anno.objects(i).class_ind`, `.mask`,
  `.parts(j).part_name`, `.parts(j).mask`): an image has human parts when an object of
  class 15 (person) has a non-empty mask; the label is 0 and, for every person with parts, in
  file order, each part's mask is set to its id in the 6-part mapping; a label that stays all
  0 (no person, or persons without parts) is all ignored (255) (AddIgnoreRegions).
- sal: sal_distill PNG / 255 > 0.5.
- normals (PASCAL): normals_distill PNG, kept where the LabelMap of
  pascal-context/trainval/<id>.mat has a class of the NYU/Context intersection, else invalid.
- semseg (NYUD): 0 -> 255 (ignored), c -> c - 1.
- depth (NYUD): metres from depth/<id>.npy, 0 = invalid.
- normals (NYUD): normals/<id>.npy, a zero vector = invalid.
"""

import json
import os
import sys

import numpy as np
import scipy.io as sio
from PIL import Image

H, W = 12, 16

HUMAN_PART_6 = {
    'hair': 1, 'head': 1, 'lear': 1, 'lebrow': 1, 'leye': 1, 'lfoot': 6, 'lhand': 4,
    'llarm': 4, 'llleg': 6, 'luarm': 3, 'luleg': 5, 'mouth': 1, 'neck': 2, 'nose': 1,
    'rear': 1, 'rebrow': 1, 'reye': 1, 'rfoot': 6, 'rhand': 4, 'rlarm': 4, 'rlleg': 6,
    'ruarm': 3, 'ruleg': 5, 'torso': 2,
}

# PASCAL-Context class ids whose names are also NYU classes (less "unknown"), plus
# tvmonitor: the pixels where the distilled normals are kept.
NORMALS_VALID = [
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46,
    49, 50, 51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95,
    96, 101, 104, 105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157,
    158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219,
    220, 223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261,
    263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304,
    307, 309, 310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355,
    357, 368, 370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413,
    414, 417, 419, 421, 423, 427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457,
]

PART_DT = [('part_name', 'O'), ('mask', 'O')]
OBJ_DT = [('class', 'O'), ('class_ind', 'O'), ('mask', 'O'), ('parts', 'O')]


def anno(imname, objects):
    """A PASCAL-Part `anno` struct. objects: (class, class_ind, mask, [(part, mask)])."""
    objs = np.zeros((1, len(objects)), dtype=OBJ_DT)
    for i, (cls, ind, mask, parts) in enumerate(objects):
        objs[0, i]['class'] = cls
        objs[0, i]['class_ind'] = np.array([[float(ind)]])
        objs[0, i]['mask'] = mask.astype(np.uint8)
        if parts:
            p = np.zeros((1, len(parts)), dtype=PART_DT)
            for j, (name, m) in enumerate(parts):
                p[0, j]['part_name'] = name
                p[0, j]['mask'] = m.astype(np.uint8)
            objs[0, i]['parts'] = p
        else:
            objs[0, i]['parts'] = np.zeros((0, 0))
    a = np.zeros((1, 1), dtype=[('imname', 'O'), ('objects', 'O')])
    a[0, 0]['imname'] = imname
    a[0, 0]['objects'] = objs
    return {'anno': a}


def box(r0, r1, c0, c1, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def expected_human_parts(mat_path):
    """The upstream loader, then AddIgnoreRegions."""
    part_mat = sio.loadmat(mat_path)['anno'][0][0][1][0]
    has_human = any(int(o[1][0][0]) == 15 and np.sum(o[2]) > 0 for o in part_mat)
    target = None
    if has_human:
        for o in part_mat:
            if o[1][0][0] == 15 and len(o[3]) != 0:
                if target is None:
                    target = np.zeros(o[2].shape)
                for part in o[3][0]:
                    target[part[1].astype(bool)] = HUMAN_PART_6[str(part[0][0])]
    if target is None:
        target = np.zeros(part_mat[0][2].shape)
    if (target == 0).all():
        target = 255 * np.ones(target.shape)
    return target.astype(np.uint8)


def save_jpeg(path, rng, h=H, w=W):
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(path, quality=90)


def pascal(root, exp, rng):
    ids = {'train': ['2008_000001', '2008_000002', '2008_000003', '2008_000004'],
           'val': ['2008_000005', '2008_000006']}
    for d in ['JPEGImages', 'semseg/VOC12', 'semseg/pascal-context', 'pascal-context/trainval',
              'human_parts', 'normals_distill', 'sal_distill', 'ImageSets/Context']:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for t in ['semseg', 'human_parts', 'sal', 'normals']:
        os.makedirs(os.path.join(exp, t), exist_ok=True)
    for split, names in ids.items():
        with open(os.path.join(root, 'ImageSets/Context', split + '.txt'), 'w') as f:
            f.write('\n'.join(names) + '\n')

    names = sorted(HUMAN_PART_6)
    all_ids = ids['train'] + ids['val']
    for k, i in enumerate(all_ids):
        save_jpeg(os.path.join(root, 'JPEGImages', i + '.jpg'), rng)
        # semseg: VOC12 for even images, pascal-context for odd ones (the fallback).
        seg = rng.integers(0, 21, (H, W)).astype(np.uint8)
        seg[0, :3] = 255
        sub = 'VOC12' if k % 2 == 0 else 'pascal-context'
        Image.fromarray(seg).save(os.path.join(root, 'semseg', sub, i + '.png'))
        np.save(os.path.join(exp, 'semseg', i + '.npy'), seg)

        # LabelMap: context classes, half of them valid for normals.
        pool = [18, 427, 440, 284, 1, 2, 7, 431]  # valid: 18, 427, 440, 284
        lm = np.array(pool, dtype=np.uint16)[rng.integers(0, len(pool), (H, W))]
        sio.savemat(os.path.join(root, 'pascal-context/trainval', i + '.mat'),
                    {'LabelMap': lm}, do_compression=(k % 2 == 1))

        # Distilled normals: RGB; a few pure black pixels, which decode to (-1,-1,-1).
        nrm = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        nrm[1, 1] = 0
        Image.fromarray(nrm).save(os.path.join(root, 'normals_distill', i + '.png'))
        valid = np.isin(lm, NORMALS_VALID)
        out = np.where(valid[..., None], nrm, 0).astype(np.uint8)
        # The layout's (0,0,0) means invalid: a valid black pixel is written (1,1,1), the
        # same direction after normalisation.
        black = valid & (nrm == 0).all(axis=2)
        out[black] = 1
        np.save(os.path.join(exp, 'normals', i + '.npy'), out)

        # Saliency: grey; exactly 127 and 128 appear to pin the threshold.
        sal = rng.integers(0, 256, (H, W)).astype(np.uint8)
        sal[0, 0], sal[0, 1] = 127, 128
        Image.fromarray(sal).save(os.path.join(root, 'sal_distill', i + '.png'))
        np.save(os.path.join(exp, 'sal', i + '.npy'),
                np.where(sal / 255.0 > 0.5, 255, 0).astype(np.uint8))

        # Human parts, one case per image.
        p = lambda j: names[(3 * k + j) % len(names)]
        if k == 0:    # one person with three parts, a dog without parts
            objects = [('dog', 12, box(8, 12, 0, 16), []),
                       ('person', 15, box(0, 10, 2, 10),
                        [(p(0), box(0, 3, 2, 10)), (p(1), box(3, 7, 2, 10)), (p(2), box(7, 10, 2, 6))])]
        elif k == 1:  # two persons, overlapping parts: the later one wins
            objects = [('person', 15, box(0, 12, 0, 8), [(p(0), box(0, 6, 0, 8)), (p(1), box(6, 12, 0, 8))]),
                       ('person', 15, box(2, 12, 4, 16), [(p(2), box(2, 8, 4, 16)), (p(3), box(8, 12, 4, 16))])]
        elif k == 2:  # no person
            objects = [('cat', 8, box(0, 12, 0, 16), [('head', box(0, 4, 0, 4))])]
        elif k == 3:  # a person without part annotations
            objects = [('person', 15, box(0, 6, 0, 6), [])]
        elif k == 4:  # a person with an empty mask (not counted), then one with every part name
            objects = [('person', 15, np.zeros((H, W), bool), [('head', box(0, 1, 0, 1))]),
                       ('person', 15, box(0, 12, 0, 16),
                        [(n, box(j // 8 + 1, j // 8 + 2, 2 * (j % 8), 2 * (j % 8) + 2)) for j, n in enumerate(names)])]
        else:         # only a bicycle
            objects = [('bicycle', 2, box(4, 8, 4, 8), [])]
        path = os.path.join(root, 'human_parts', i + '.mat')
        sio.savemat(path, anno(i, objects), do_compression=(k % 2 == 0))
        np.save(os.path.join(exp, 'human_parts', i + '.npy'), expected_human_parts(path))


def nyud(root, exp, rng):
    ids = {'train': ['0003', '0004', '0005'], 'val': ['0001', '0002']}
    for d in ['images', 'segmentation', 'depth', 'normals', 'edge', 'gt_sets']:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for t in ['semseg', 'depth', 'normals']:
        os.makedirs(os.path.join(exp, t), exist_ok=True)
    for split, names in ids.items():
        with open(os.path.join(root, 'gt_sets', split + '.txt'), 'w') as f:
            f.write('\n'.join(names) + '\n')
    for k, i in enumerate(ids['train'] + ids['val']):
        save_jpeg(os.path.join(root, 'images', i + '.jpg'), rng)
        seg = rng.integers(0, 41, (H, W)).astype(np.uint8)
        Image.fromarray(seg).save(os.path.join(root, 'segmentation', i + '.png'))
        s = seg.astype(float)
        s[s == 0] = 256
        np.save(os.path.join(exp, 'semseg', i + '.npy'), (s - 1).astype(np.uint8))

        depth = rng.uniform(0.5, 9.9, (H, W)).astype(np.float32 if k % 2 else np.float64)
        depth[rng.random((H, W)) < 0.1] = 0
        np.save(os.path.join(root, 'depth', i + '.npy'), depth)
        np.save(os.path.join(exp, 'depth', i + '.npy'),
                np.round(depth.astype(np.float64) * 1000).astype(np.uint16))

        n = rng.normal(size=(H, W, 3))
        n /= np.linalg.norm(n, axis=2, keepdims=True)
        n[rng.random((H, W)) < 0.1] = 0
        n = n.astype(np.float32)
        np.save(os.path.join(root, 'normals', i + '.npy'), n)
        enc = np.round((n.astype(np.float64) + 1) / 2 * 65535).astype(np.uint16)
        enc[(n == 0).all(axis=2)] = 0
        np.save(os.path.join(exp, 'normals', i + '.npy'), enc)

        np.save(os.path.join(root, 'edge', i + '.npy'), (rng.random((H, W)) < 0.2).astype(np.float32))


def mat_fixtures(out):
    """The `.mat` reader's unit-test files (src/data/mat.rs)."""
    os.makedirs(out, exist_ok=True)
    h, w = 5, 7
    head, leg = box(0, 2, 0, 3, h, w), box(3, 5, 4, 7, h, w)
    a = anno('2008_000001', [('person', 15, head | leg, [('head', head), ('llleg', leg)]),
                             ('dog', 12, np.ones((h, w), bool), [])])
    sio.savemat(os.path.join(out, 'parts_plain.mat'), a, do_compression=False)
    sio.savemat(os.path.join(out, 'parts_zlib.mat'), a, do_compression=True)
    sio.savemat(os.path.join(out, 'labelmap.mat'),
                {'LabelMap': np.arange(h * w, dtype=np.uint16).reshape(h, w)}, do_compression=True)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else 'tests/fixtures'
    rng = np.random.default_rng(13)
    base = os.path.join(out, 'replicas')
    pascal(os.path.join(base, 'PASCAL_MT'), os.path.join(base, 'expected', 'pascal-context'), rng)
    nyud(os.path.join(base, 'NYUD_MT'), os.path.join(base, 'expected', 'nyud'), rng)
    mat_fixtures(os.path.join(out, 'mat'))
    with open(os.path.join(base, 'expected', 'README.json'), 'w') as f:
        json.dump({'generator': 'reference/make_dataset_replicas.py', 'seed': 13,
                   'size': [H, W]}, f, indent=1)
        f.write('\n')


if __name__ == '__main__':
    main()
