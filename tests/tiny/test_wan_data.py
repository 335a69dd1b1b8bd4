import numpy as np
import pytest

from nag_guidance.tiny import video_data as vd
from nag_guidance.tiny.checker import BORDER
from nag_guidance.tiny.video_checker import check_clips


def truth(clips: list[vd.Clip]) -> list[vd.VideoSpec]:
    return [vd.VideoSpec(c.shape, c.colour, c.background, c.motion) for c in clips]


def test_every_caption_form_parses_back_to_what_it_states():
    _, clips, _ = vd.training_clips(0, 0, 40)
    for template in vd.CAPTION_TEMPLATES:
        for clip in clips:
            assert vd.parse_caption(vd.caption(clip, template)) == vd.spec_of(clip, template)
    assert vd.caption(vd.VideoSpec("circle", "red", "blue", "left")) == "a red circle moving left on a blue background"
    assert vd.parse_caption("a circle moving") == vd.VideoSpec(shape="circle", motion=vd.MOVING)


def test_tracks_stay_clear_of_the_background_ring_and_held_out_combinations_are_never_drawn():
    frames, clips, captions = vd.training_clips(3, 7, 200)
    assert frames.shape == (200, vd.FRAMES, 32, 32, 3) and len(captions) == 200
    ring = np.ones((32, 32), bool)
    ring[BORDER + 1 : -BORDER - 1, BORDER + 1 : -BORDER - 1] = False
    for clip, clip_frames in zip(clips, frames, strict=True):
        assert (clip.shape, clip.colour, clip.background, clip.motion) not in vd.HELD_OUT
        assert (clip_frames[:, ring] == vd.PALETTE[clip.background]).all()
    assert {c.motion for c in clips} == set(vd.MOTIONS)


def test_checker_reads_procedural_clips_and_their_motion():
    frames, clips, _ = vd.training_clips(1, 0, 150)
    result = check_clips(frames)
    right = result.matches(truth(clips))
    assert right["all"].all()
    assert (result.consistency == 1).all() and (result.track_error < 0.5).all()
    assert result.motion_names() == [c.motion for c in clips]


def test_checker_reads_a_reversed_clip_as_the_opposite_motion():
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up", "still": "still"}
    frames, clips, _ = vd.training_clips(2, 0, 60)
    reversed_reading = check_clips(frames[:, ::-1].copy()).motion_names()
    assert reversed_reading == [opposite[c.motion] for c in clips]


def test_moving_spec_accepts_any_direction_but_still():
    frames, clips, _ = vd.training_clips(4, 0, 80)
    moving = check_clips(frames).matches(vd.VideoSpec(motion=vd.MOVING))["motion"]
    assert moving.tolist() == [c.motion != "still" for c in clips]


def test_shuffled_frames_and_changing_colour_show_as_inconsistency():
    clip = vd.Clip("square", "red", "blue", "right", 16, 16, 6)
    frames = vd.render_clip(clip)
    shuffled = frames[np.random.default_rng(0).permutation(vd.FRAMES)]
    recoloured = frames.copy()
    recoloured[4:][recoloured[4:].sum(-1) == sum(vd.PALETTE["red"])] = vd.PALETTE["yellow"]
    result = check_clips(np.stack([frames, shuffled, recoloured]))
    assert result.track_error[1] > 1.0 > result.track_error[0]
    assert result.consistency[0] == 1 and result.consistency[2] < 0.6


def test_checker_rejects_images():
    with pytest.raises(ValueError, match="clips"):
        check_clips(np.zeros((2, 32, 32, 3), np.uint8))
