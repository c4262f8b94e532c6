"""MIKASA-Robo's memory tasks (Cherepanov et al., arXiv 2502.10550) rebuilt on ManiSkill 3 from primitive shapes.

The rules, timing, object placement, success tests, rewards and observations follow the task files
of github.com/CognitiveAISystems/MIKASA-Robo (read for their numbers; the code here is memrl's own).
What is the same in every task:

- Scene: ManiSkill's table (`TableSceneBuilder`), a Panda arm at x = -0.615 starting from joint
  angles (0, 0, 0, -2pi/3, 0, 2pi/3, pi/4, 0.04, 0.04) plus Gaussian noise of std 0.02 on the seven
  arm joints (one draw shared by the envs reset together, as the original draws it).
- Robot `panda_wristcam` (a camera on the hand) by default; `panda` (the same arm without the camera
  mount) is accepted and is what a machine without a renderer uses.
- Control `pd_joint_delta_pos`: 8 actions in [-1, 1] (seven arm joint deltas and the gripper), what
  MIKASA-Robo's baselines train with.
- Cameras: `base_camera` 128 x 128, field of view pi/2, at (0.3, 0, 0.6) looking at (-0.1, 0, 0.1),
  and the wrist camera of `panda_wristcam` (`hand_camera`, 128 x 128).
- Observation "state" (obs_mode="state"): the flat vector MIKASA-Robo calls state: joint positions
  and velocities, TCP pose, then the task's extras including `oracle_info` (the answer): an MDP
  made for debugging. The memory test is RGB + joints (see `envs.maniskill.adapter`).
- Rewards: "normalized_dense" (the default; dense / its maximum, so in [0, 1]), "dense", "sparse"
  (1 at the success step) and "none". ManiSkill ends an episode at its success step; there is
  no failure state.
- Objects are dynamic bodies. An object out of play is lifted 1000 m above its place (out of every
  camera), as MIKASA-Robo does; unlike the original, its velocity is zeroed each step while it is
  out of play and it is put back on the table when it returns (run on mani-skill 3.0.1, the
  original's objects keep falling from 1000 m and never come back).

Tasks (T = episode length):

    RememberColor{3,5,9} (T 60): a cube of one of N colours stands at the centre for steps 0-4,
        nothing is shown at steps 5-9, and from step 10 the N cubes stand at shuffled places; success
        is the TCP within 5 cm of the cube of the shown colour with the arm static (joint speeds
        <= 0.2). Touching another cube is not a failure; the episode just goes on.
    RememberShape{3,5,9} (T 60): the same with N blue shapes (cube, sphere, cylinder, cross, torus,
        star, pyramid, T, crescent: the first N).
    RememberShapeAndColor{3x2,3x3,5x3} (T 60): the same with shape x colour pairs (shapes cube,
        sphere, T, cross, torus; colours red, green, blue: the first S x C pairs).
    ShellGame{Touch,Push,Pick} (T 90): a red ball lies at one of three places 20 cm apart for steps
        0-4; from step 5 three upside-down cups stand on the three places (the ball is under one;
        the cups never move by themselves). Touch: TCP within 8 cm of the ball's cup and the arm
        static. Push: that cup within 8 cm of a goal 10 cm in front of the ball, arm static. Pick:
        that cup within 8 cm of a goal 12.5 cm above the ball, arm static. Success counts from step
        5 (Touch) or 6 (Push, Pick) on.
    BunchOfColors{3,5,7}, SeqOfColors{3,5,7}, ChainOfColors{3,5,7} (T 120): K of 9 coloured cubes are
        shown, all at once for steps 0-4 (Bunch) or one at a time for 5 steps each (Seq, Chain);
        then 5 empty steps; then all 9 cubes stand at shuffled places. Touch (TCP within 2 cm of the
        point 2.5 cm above a cube, arm static) exactly the K shown cubes (Chain: in the order shown);
        touches count for the whole episode and a wrong one makes success impossible, ending nothing.
    Intercept{Slow,Medium,Fast} (T 90): a ball starts rolling along +y at 0.25-0.5, 0.5-0.75 or
        0.75-1 m/s; success is the ball within 10 cm (xy) of a target disc 20 cm further in x.
    InterceptGrab{Slow,Medium,Fast} (T 90): the same ball; success is grasping it with the arm static.
    Rotate{Lenient,Strict}{Pos,PosNeg} (T 90): turn a symmetric peg by a target angle (in the
        observation as `prompt`: [0.1, pi/2], or +-[0.1, pi/4]) from its start heading, to within
        0.1 rad, arm static, from step 6 on; Strict: its centre within 5 cm of its start in x and y.
    TakeItBack (T 180): push a cube from its start (marked for the human view only) into a target
        8 cm in radius, which then changes colour, and back to within 8 cm of its start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sapien
import torch
from mani_skill.agents.robots import Panda
from mani_skill.envs.sapien_env import BaseEnv
from mani_skill.sensors.camera import CameraConfig
from mani_skill.utils import sapien_utils
from mani_skill.utils.building import actors
from mani_skill.utils.geometry.rotation_conversions import matrix_to_euler_angles, quaternion_to_matrix
from mani_skill.utils.registration import register_env
from mani_skill.utils.scene_builder.table import TableSceneBuilder
from mani_skill.utils.structs.pose import Pose
from mani_skill.utils.structs.types import GPUMemoryConfig, SimConfig
from transforms3d.euler import euler2quat

ROBOT_BASE = (-0.615, 0.0, 0.0)
START_QPOS = (0.0, 0.0, 0.0, -np.pi * 2 / 3, 0.0, np.pi * 2 / 3, np.pi / 4, 0.04, 0.04)
LIFT = 1000.0
"""How far an object out of play is lifted (metres)."""
STATIC_JOINT_SPEED = 0.2
"""The arm is static when every arm joint moves slower than this (rad/s), ManiSkill's `is_static(0.2)`."""
SHOW_STEPS = 5
"""Steps the cue is shown (the object or colour to remember; the ball)."""


def _quat_about_z(angle: float) -> list[float]:
    return [float(np.cos(angle / 2)), 0.0, 0.0, float(np.sin(angle / 2))]


UPRIGHT = [float(np.cos(np.pi / 4)), 0.0, float(np.sin(np.pi / 4)), 0.0]
"""Turns ManiSkill's cylinders (axis x) upright (axis z)."""


@dataclass(frozen=True)
class Part:
    """One primitive of an object: "box" (size = half sizes), "sphere" (size[0] = radius) or
    "cylinder" (size = (radius, half length)), at `offset` turned by `quat` in the object's frame."""

    kind: str
    size: tuple[float, ...]
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    quat: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)


def _ring(radius: float, count: int, make) -> list[Part]:
    """`count` parts around a circle of `radius`, each from make(angle, chord)."""
    chord = 2 * radius * np.sin(np.pi / count)
    return [make(2 * np.pi * index / count, chord) for index in range(count)]


def shape_parts(shape: str, scale: float = 0.02) -> list[Part]:
    """The primitives of MIKASA-Robo's shapes at its sizes (scale 2 cm): memrl's own drawings, same extents."""
    if shape == "cube":
        return [Part("box", (scale,) * 3)]
    if shape == "sphere":
        return [Part("sphere", (scale,))]
    if shape == "cylinder":
        return [Part("cylinder", (scale, scale), quat=tuple(UPRIGHT))]
    if shape == "cross":
        arm, half_width = 1.5 * scale, 0.375 * scale
        return [Part("box", (arm, half_width, half_width)), Part("box", (half_width, arm, half_width))]
    if shape == "torus":
        tube = scale / 2
        return _ring(scale, 8, lambda angle, chord: Part(
            "box", (tube, chord / 2 + tube / 2, tube),
            (scale * np.cos(angle), scale * np.sin(angle), 0.0), tuple(_quat_about_z(angle))))
    if shape == "star":
        radius, half_thickness = 1.5 * scale, 0.375 * scale
        return [Part("box", (radius / 2, half_thickness, half_thickness),
                     (radius / 2 * np.cos(angle), radius / 2 * np.sin(angle), 0.0), tuple(_quat_about_z(angle)))
                for angle in 2 * np.pi * np.arange(5) / 5]
    if shape == "pyramid":
        layer = scale / 4
        return [Part("box", (scale * shrink, scale * shrink, layer), (0.0, 0.0, height))
                for shrink, height in ((1.0, 0.0), (0.7, scale / 2), (0.4, scale))]
    if shape == "t_shape":
        half_thickness = 0.375 * scale
        return [Part("box", (scale, half_thickness, half_thickness), (0.0, scale - half_thickness, 0.0)),
                Part("box", (half_thickness, scale, half_thickness), (0.0, -half_thickness, 0.0))]
    if shape == "crescent":
        radius, half_thickness = 0.75 * scale, scale / 4
        angles = np.pi * (np.arange(6) + 0.5) / 6 - np.pi / 2
        chord = 2 * radius * np.sin(np.pi / 12)
        return [Part("box", (half_thickness, chord / 2 + half_thickness / 2, scale / 2),
                     (radius * np.cos(angle), radius * np.sin(angle), 0.0), tuple(_quat_about_z(angle)))
                for angle in angles]
    raise ValueError(f"unknown shape {shape!r}")


SHAPES = ("cube", "sphere", "cylinder", "cross", "torus", "star", "pyramid", "t_shape", "crescent")
"""RememberShape's shapes in MIKASA-Robo's order; level N uses the first N."""
COLORS = {
    "red": (1.0, 0.0, 0.0), "lime": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0), "cyan": (0.0, 1.0, 1.0), "maroon": (128 / 255, 0.0, 0.0),
    "orange": (1.0, 128 / 255, 0.0), "teal": (0.0, 128 / 255, 128 / 255),
}
"""RememberColor's colours in MIKASA-Robo's order (RGB 0..1); level N uses the first N."""
PAIR_SHAPES = ("cube", "sphere", "t_shape", "cross", "torus")
PAIR_COLORS = ("red", "lime", "blue")
"""RememberShapeAndColor's objects: (shape, colour) in shape-major order, level S x C uses the first S * C."""
CUP_PARTS = [
    Part("cylinder", (0.045, 0.0025), (0.0, 0.0, 0.0375), tuple(UPRIGHT)),
    *_ring(0.0425, 12, lambda angle, chord: Part(
        "box", (0.0025, chord / 2 + 0.001, 0.04), (0.0425 * np.cos(angle), 0.0425 * np.sin(angle), 0.0),
        tuple(_quat_about_z(angle)))),
]
"""An upside-down cup, 9 cm wide and 8 cm high, origin at its centre: ShellGame's stand-in for YCB's mug."""
CUP_COLOR = (0.85, 0.85, 0.85)


def build_object(scene, name: str, parts: list[Part], color: tuple[float, float, float], at: list[float]):
    """A dynamic actor made of `parts` (collision always; visuals only where the scene can render)."""
    builder = scene.create_actor_builder()
    with_visuals = scene.can_render()
    material = sapien.render.RenderMaterial(base_color=[*color, 1.0]) if with_visuals else None
    for part in parts:
        pose = sapien.Pose(p=list(part.offset), q=list(part.quat))
        if part.kind == "box":
            shape_args = {"half_size": list(part.size)}
            add_collision, add_visual = builder.add_box_collision, builder.add_box_visual
        elif part.kind == "sphere":
            shape_args = {"radius": part.size[0]}
            add_collision, add_visual = builder.add_sphere_collision, builder.add_sphere_visual
        else:
            shape_args = {"radius": part.size[0], "half_length": part.size[1]}
            add_collision, add_visual = builder.add_cylinder_collision, builder.add_cylinder_visual
        add_collision(pose=pose, **shape_args)
        if with_visuals:
            add_visual(pose=pose, material=material, **shape_args)
    builder.initial_pose = sapien.Pose(p=at)
    return builder.build(name=name)


class MikasaTableEnv(BaseEnv):
    """What every task shares (module docstring). A task builds `self.objects` in `_build_objects`,
    draws its hidden per-env state in `_draw_episodes(env_idx)`, and says in `_phase()` where each
    object is put at the current step: (positions [num_envs, n, 3], put bool [num_envs, n]); an
    object not put this step moves freely. `evaluate()` puts the objects first, so the observation
    and the success test of step t see the scene of step t, as in the original."""

    SUPPORTED_ROBOTS = ("panda_wristcam", "panda")
    SUPPORTED_REWARD_MODES = ("normalized_dense", "dense", "sparse", "none")
    agent: Panda
    objects: list
    objects_have_phases = True
    """False for tasks whose objects only move by physics (Intercept, Rotate, TakeItBack)."""
    MAX_DENSE_REWARD: float
    """The dense reward of a success step, MIKASA-Robo's divisor for normalized_dense."""

    def __init__(self, *args, robot_uids="panda_wristcam", robot_init_qpos_noise=0.02,
                 control_mode="pd_joint_delta_pos", **kwargs):
        self.robot_init_qpos_noise = robot_init_qpos_noise
        super().__init__(*args, robot_uids=robot_uids, control_mode=control_mode, **kwargs)

    @property
    def _default_sim_config(self):
        memory = GPUMemoryConfig(found_lost_pairs_capacity=2**25, max_rigid_patch_count=2**21,
                                 max_rigid_contact_count=2**22)
        return SimConfig(gpu_memory_config=memory)

    @property
    def _default_sensor_configs(self):
        pose = sapien_utils.look_at(eye=[0.3, 0.0, 0.6], target=[-0.1, 0.0, 0.1])
        return [CameraConfig("base_camera", pose, 128, 128, np.pi / 2, 0.01, 100)]

    @property
    def _default_human_render_camera_configs(self):
        pose = sapien_utils.look_at([0.5, 1.0, 1.0], [-0.3, 0.0, 0.0])
        return CameraConfig("render_camera", pose, 512, 512, 1, 0.01, 100)

    def _load_agent(self, options: dict):
        super()._load_agent(options, sapien.Pose(p=list(ROBOT_BASE)))

    def _load_scene(self, options: dict):
        self.table_scene = TableSceneBuilder(self, robot_init_qpos_noise=self.robot_init_qpos_noise)
        self.table_scene.build()
        self.objects = []
        self._build_objects()
        self._allocate_state()

    def _build_objects(self) -> None:
        raise NotImplementedError

    def _allocate_state(self) -> None:
        raise NotImplementedError

    def _draw_episodes(self, env_idx: torch.Tensor) -> None:
        raise NotImplementedError

    def _phase(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _initialize_episode(self, env_idx: torch.Tensor, options: dict):
        with torch.device(self.device):
            self.table_scene.initialize(env_idx)
            self._draw_episodes(env_idx)
            qpos = torch.tensor(START_QPOS, dtype=torch.float32)
            qpos[:7] += self.robot_init_qpos_noise * torch.randn(7)
            self.agent.reset(qpos.expand(len(env_idx), -1).clone())
            self.agent.robot.set_root_pose(sapien.Pose(p=list(ROBOT_BASE)))

    def _put_objects(self) -> None:
        if not self.objects_have_phases:
            return
        positions, put = self._phase()
        for index, actor in enumerate(self.objects):
            state = actor.get_state()  # [num_envs, 13]: position, quaternion, linear and angular velocity
            placed = torch.zeros_like(state)
            placed[:, :3] = positions[:, index]
            placed[:, 3] = 1.0
            actor.set_state(torch.where(put[:, index, None], placed, state))

    def evaluate(self):
        self._put_objects()
        return self._judge()

    def _judge(self) -> dict:
        raise NotImplementedError

    def arm_speed(self) -> torch.Tensor:
        """[num_envs]: the norm of the seven arm joint velocities."""
        return torch.linalg.norm(self.agent.robot.get_qvel()[..., :-2], dim=-1)

    def compute_normalized_dense_reward(self, obs, action, info):
        return self.compute_dense_reward(obs, action, info) / self.MAX_DENSE_REWARD


# -- RememberColor, RememberShape, RememberShapeAndColor --------------------------------------


def _arc_places(count: int, even_offset: bool) -> torch.Tensor:
    """[count, 2] xy of MIKASA-Robo's choice places: a row at x = 0 for 3 objects, else an arc of
    radius 0.3 around (-0.25, 0) over the half circle facing away from the robot."""
    if count == 3 and not even_offset:
        return torch.tensor([[0.0, -(key - 1) * 0.1] for key in range(3)])
    places = []
    for key in range(count):
        if even_offset and count % 2 == 0:
            angle = np.pi * (key + 0.5 - count / 2) / count
        else:
            angle = np.pi * (key - count // 2) / count
        y = 0.3 * np.sin(angle)
        if count in (5, 9):
            y -= (key - count // 2) * 0.025
        places.append([0.3 * np.cos(angle) - 0.25, y])
    return torch.tensor(places, dtype=torch.float32)


def _jittered_shuffled_places(places: torch.Tensor, batch: int, scale: float) -> torch.Tensor:
    """[batch, count, 2]: each of `places` [count, 2] jittered by N(0, scale / 2) per axis, keeping
    3 * scale between objects (50 tries, else the place unjittered), then shuffled among the objects."""
    count, device = places.shape[0], places.device
    places = places.expand(batch, count, 2).clone()
    for index in range(count):
        settled = torch.zeros(batch, dtype=torch.bool, device=device)
        for _ in range(50):
            candidate = places[:, index] + torch.randn(batch, 2, device=device) * scale * 0.5
            if index == 0:
                clear = torch.ones(batch, dtype=torch.bool, device=device)
            else:
                clear = (torch.linalg.norm(candidate[:, None] - places[:, :index], dim=-1) >= 3 * scale).all(-1)
            take = clear & ~settled
            places[take, index] = candidate[take]
            settled |= clear
            if bool(settled.all()):
                break
    order = torch.rand(batch, count, device=device).argsort(-1)
    return torch.gather(places, 1, order[..., None].expand(-1, -1, 2))


class RememberObjectEnv(MikasaTableEnv):
    """Remember the object shown at the centre (steps 0-4), then, after 5 empty steps, reach it among
    all N objects (steps 10 on). The objects differ by colour, shape or both (`kinds`)."""

    GOAL_THRESH = 0.05
    OBJECT_HEIGHT = 0.02
    """Every object is put with its origin 2 cm above the table, as in the original."""
    BLANK_STEPS = 5
    MAX_DENSE_REWARD = 3.0
    kinds: list[tuple[str, tuple[float, float, float]]]
    """(shape, rgb) of each object."""
    pair_layout = False
    """RememberShapeAndColor's own layout: an even number of objects placed symmetrically, and the
    jitter drawn for all objects at once."""

    @property
    def choice_start(self) -> int:
        return SHOW_STEPS + self.BLANK_STEPS

    def _build_objects(self):
        for index, (shape, color) in enumerate(self.kinds):
            self.objects.append(build_object(self.scene, f"object_{index}_{shape}", shape_parts(shape), color,
                                             [0.0, 0.0, LIFT + 0.1 * index]))
        self.places = _arc_places(len(self.kinds), self.pair_layout).to(self.device)

    def _allocate_state(self):
        count = len(self.kinds)
        self.target = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.slots = torch.zeros(self.num_envs, count, 2, device=self.device)

    def _draw_episodes(self, env_idx):
        count, batch = len(self.kinds), len(env_idx)
        self.target[env_idx] = torch.randint(count, (batch,), device=self.device)
        jitter = _jointly_jittered_shuffled_places if self.pair_layout else _jittered_shuffled_places
        self.slots[env_idx] = jitter(self.places, batch, self.OBJECT_HEIGHT)

    def _phase(self):
        step = self.elapsed_steps.long()
        count = len(self.kinds)
        rows = torch.arange(self.num_envs, device=self.device)
        height = torch.full((self.num_envs, count, 1), self.OBJECT_HEIGHT, device=self.device)
        on_table = torch.cat([self.slots, height], dim=-1)
        positions = on_table + torch.tensor([0.0, 0.0, LIFT], device=self.device)
        showing = step < SHOW_STEPS
        centre = torch.tensor([0.0, 0.0, self.OBJECT_HEIGHT], device=self.device)
        positions[rows, self.target] = torch.where(showing[:, None], centre, positions[rows, self.target])
        positions = torch.where((step >= self.choice_start)[:, None, None], on_table, positions)
        put = (step <= self.choice_start)[:, None].expand(-1, count)
        return positions, put

    def _target_position(self) -> torch.Tensor:
        positions = torch.stack([actor.pose.p for actor in self.objects], dim=1)
        return positions[torch.arange(self.num_envs, device=self.device), self.target]

    def _judge(self):
        tcp_to_target = self._target_position() - self.agent.tcp.pose.p
        is_obj_placed = torch.linalg.norm(tcp_to_target, dim=-1) <= self.GOAL_THRESH
        is_robot_static = self.agent.is_static(STATIC_JOINT_SPEED)
        return {"success": is_obj_placed & is_robot_static, "is_obj_placed": is_obj_placed,
                "is_robot_static": is_robot_static, "tcp_to_target": tcp_to_target}

    def _oracle_info(self):
        return self.target.float()[:, None]

    def _get_obs_extra(self, info):
        extra = {"tcp_pose": self.agent.tcp.pose.raw_pose}
        if self.obs_mode in ("state", "state_dict"):
            extra["oracle_info"] = self._oracle_info()
            for index, actor in enumerate(self.objects):
                extra[f"goal_{index}_pose"] = actor.pose.p * (self.target == index)[:, None]
        return extra

    def compute_dense_reward(self, obs, action, info):
        reaching = 1 - torch.tanh(10.0 * torch.linalg.norm(info["tcp_to_target"], dim=-1))
        still = 1 - torch.tanh(5.0 * self.arm_speed())
        reward = reaching + 0.5 * still + 0.5 * (info["is_robot_static"] & info["is_obj_placed"])
        return torch.where(info["success"], self.MAX_DENSE_REWARD, reward)


class RememberColorEnv(RememberObjectEnv):
    def __init__(self, *args, num_colors: int = 3, **kwargs):
        if num_colors not in (3, 5, 9):
            raise ValueError(f"RememberColor has levels 3, 5 and 9 colours, got {num_colors}")
        self.kinds = [("cube", rgb) for rgb in list(COLORS.values())[:num_colors]]
        super().__init__(*args, **kwargs)


class RememberShapeEnv(RememberObjectEnv):
    def __init__(self, *args, num_shapes: int = 3, **kwargs):
        if num_shapes not in (3, 5, 9):
            raise ValueError(f"RememberShape has levels 3, 5 and 9 shapes, got {num_shapes}")
        self.kinds = [(shape, COLORS["blue"]) for shape in SHAPES[:num_shapes]]
        super().__init__(*args, **kwargs)


class RememberShapeAndColorEnv(RememberObjectEnv):
    pair_layout = True

    def __init__(self, *args, num_shapes: int = 3, num_colors: int = 2, **kwargs):
        if (num_shapes, num_colors) not in ((3, 2), (3, 3), (5, 3)):
            raise ValueError(f"RememberShapeAndColor has levels 3x2, 3x3 and 5x3, got {num_shapes}x{num_colors}")
        # The original enumerates shape-major over all 5 x 3 pairs and keeps the first S * C.
        pairs = [(shape, color) for shape in PAIR_SHAPES for color in PAIR_COLORS][: num_shapes * num_colors]
        self.pair_ids = torch.tensor([[PAIR_SHAPES.index(shape), PAIR_COLORS.index(color)] for shape, color in pairs])
        self.kinds = [(shape, COLORS[color]) for shape, color in pairs]
        super().__init__(*args, **kwargs)

    def _oracle_info(self):
        return self.pair_ids.to(self.device)[self.target].float()


def _jointly_jittered_shuffled_places(places: torch.Tensor, batch: int, scale: float) -> torch.Tensor:
    """RememberShapeAndColor's variant: all `places` [count, 2] jittered together by N(0, scale / 2)
    per axis, up to 20 tries, keeping the try whose closest pair is farthest apart (stopping at one
    with 3 * scale between every pair; the unjittered places if no try beats a closest pair of 0),
    then shuffled. -> [batch, count, 2]"""
    count, device = places.shape[0], places.device
    best = places.expand(batch, count, 2).clone()
    best_gap = torch.zeros(batch, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    same_object = torch.eye(count, device=device, dtype=torch.bool)
    for _ in range(20):
        candidate = places + torch.randn(batch, count, 2, device=device) * scale * 0.5
        gaps = torch.cdist(candidate, candidate).masked_fill(same_object, float("inf")).amin(dim=(-2, -1))
        better = (gaps > best_gap) & ~done
        best[better], best_gap[better] = candidate[better], gaps[better]
        done |= better & (gaps >= 3 * scale)
        if bool(done.all()):
            break
    order = torch.rand(batch, count, device=device).argsort(-1)
    return torch.gather(best, 1, order[..., None].expand(-1, -1, 2))


# -- BunchOfColors, SeqOfColors, ChainOfColors -----------------------------------------------


class ColorSetEnv(MikasaTableEnv):
    """Remember K of the 9 coloured cubes, shown all at once (`presentation="bunch"`) or one after
    another ("sequence"), then touch each of them among all 9 (`ordered`: in the order shown).

    A touch: the TCP within 2 cm of the point 2.5 cm above a cube's centre, with the arm static, in
    the choice phase; touches are remembered for the episode (the cube stays). Success: the touched
    cubes are exactly the K shown ones (ChainOfColors: first touched in the order shown) and the arm
    is static. A wrong touch makes success impossible but ends nothing."""

    CUBE_HALFSIZE = 0.02
    TOUCH_RADIUS = 0.02
    TOUCH_HEIGHT = 0.025
    NUM_COLORS = 9
    MAX_DENSE_REWARD = 100.0

    def __init__(self, *args, set_size: int = 3, presentation: str = "sequence", ordered: bool = False, **kwargs):
        if set_size not in (3, 5, 7):
            raise ValueError(f"the colour-set tasks have levels 3, 5 and 7 cubes, got {set_size}")
        if presentation not in ("bunch", "sequence"):
            raise ValueError(f"presentation must be 'bunch' or 'sequence', got {presentation!r}")
        self.set_size, self.presentation, self.ordered = set_size, presentation, ordered
        super().__init__(*args, **kwargs)

    @property
    def choice_start(self) -> int:
        shown = SHOW_STEPS if self.presentation == "bunch" else SHOW_STEPS * self.set_size
        return shown + SHOW_STEPS  # then 5 empty steps

    def _build_objects(self):
        for index, rgb in enumerate(COLORS.values()):
            self.objects.append(build_object(self.scene, f"cube_{index}", shape_parts("cube"), rgb,
                                             [0.0, 0.0, LIFT + 0.1 * index]))
        self.places = _arc_places(self.NUM_COLORS, False).to(self.device)
        keys = torch.arange(self.NUM_COLORS, dtype=torch.float32)
        angles = torch.pi * (keys - self.NUM_COLORS // 2) / self.NUM_COLORS
        shift = (keys - self.NUM_COLORS // 2) * 0.015
        bunch = torch.stack([0.22 * torch.cos(angles), 0.22 * torch.sin(angles) - shift], dim=-1)
        self.bunch_places = bunch.to(self.device)
        """Where BunchOfColors shows each colour (an arc of radius 22 cm around the table's centre)."""

    def _allocate_state(self):
        self.sequence = torch.zeros(self.num_envs, self.set_size, dtype=torch.long, device=self.device)
        self.slots = torch.zeros(self.num_envs, self.NUM_COLORS, 2, device=self.device)
        self.touched = torch.zeros(self.num_envs, self.NUM_COLORS, dtype=torch.bool, device=self.device)
        self.touch_order = torch.full((self.num_envs, self.set_size), -1, dtype=torch.long, device=self.device)
        """The first `set_size` cubes touched, in order (-1: none yet); what ChainOfColors judges."""

    def _draw_episodes(self, env_idx):
        batch = len(env_idx)
        self.sequence[env_idx] = torch.rand(batch, self.NUM_COLORS, device=self.device).argsort(-1)[:, : self.set_size]
        self.slots[env_idx] = _jittered_shuffled_places(self.places, batch, self.CUBE_HALFSIZE)
        self.touched[env_idx] = False
        self.touch_order[env_idx] = -1

    def in_set(self) -> torch.Tensor:
        """bool [num_envs, 9]: the cube's colour was shown."""
        return torch.zeros_like(self.touched).scatter_(1, self.sequence, True)

    def _phase(self):
        step = self.elapsed_steps.long()
        rows = torch.arange(self.num_envs, device=self.device)
        height = torch.full((self.num_envs, self.NUM_COLORS, 1), self.CUBE_HALFSIZE, device=self.device)
        on_table = torch.cat([self.slots, height], dim=-1)
        positions = on_table + torch.tensor([0.0, 0.0, LIFT], device=self.device)
        if self.presentation == "bunch":
            shown = torch.cat([self.bunch_places, torch.full((self.NUM_COLORS, 1), self.CUBE_HALFSIZE,
                                                             device=self.device)], dim=-1).expand_as(positions)
            showing = (step < SHOW_STEPS)[:, None] & self.in_set()
            positions = torch.where(showing[..., None], shown, positions)
        else:
            current = self.sequence[rows, (step // SHOW_STEPS).clamp(max=self.set_size - 1)]
            centre = torch.tensor([0.0, 0.0, self.CUBE_HALFSIZE], device=self.device)
            showing = step < SHOW_STEPS * self.set_size
            positions[rows, current] = torch.where(showing[:, None], centre, positions[rows, current])
        positions = torch.where((step >= self.choice_start)[:, None, None], on_table, positions)
        put = (step <= self.choice_start)[:, None].expand(-1, self.NUM_COLORS)
        return positions, put

    def _touch_points(self) -> torch.Tensor:
        positions = torch.stack([actor.pose.p for actor in self.objects], dim=1)
        return positions + torch.tensor([0.0, 0.0, self.TOUCH_HEIGHT], device=self.device)

    def _judge(self):
        choosing = self.elapsed_steps >= self.choice_start
        is_robot_static = self.agent.is_static(STATIC_JOINT_SPEED)
        touch_points = self._touch_points()
        near = torch.linalg.norm(touch_points - self.agent.tcp.pose.p[:, None], dim=-1) < self.TOUCH_RADIUS
        touching = near & (choosing & is_robot_static)[:, None]
        for cube in range(self.NUM_COLORS):  # new touches of one step are recorded in colour order, as the original
            new = touching[:, cube] & ~self.touched[:, cube]
            free = self.touch_order == -1
            slot = free.float().argmax(-1)
            record = new & free.any(-1)
            self.touch_order[record, slot[record]] = cube
            self.touched[:, cube] |= touching[:, cube]
        in_set = self.in_set()
        rows = torch.arange(self.num_envs, device=self.device)
        right_set = (self.touched == in_set).all(-1)
        in_order = (self.touch_order == self.sequence).all(-1)
        success = right_set & is_robot_static & choosing
        if self.ordered:
            success &= in_order
        if self.ordered:
            position = torch.where(self.touch_order != self.sequence, torch.arange(self.set_size, device=self.device),
                                   self.set_size).min(-1).values.clamp(max=self.set_size - 1)
            next_cube = self.sequence[rows, position]
            aiming = choosing
        else:
            untouched = in_set & ~self.touched
            next_cube = untouched.float().argmax(-1)  # the lowest colour index left
            aiming = choosing & untouched.any(-1)
        tcp_to_next = (touch_points[rows, next_cube] - self.agent.tcp.pose.p) * aiming[:, None]
        return {"success": success, "is_robot_static": is_robot_static, "tcp_to_next": tcp_to_next,
                "next_cube": torch.where(aiming, next_cube, -1)}

    def _oracle_info(self):
        return self.sequence.float()

    def _get_obs_extra(self, info):
        extra = {"tcp_pose": self.agent.tcp.pose.raw_pose}
        if self.obs_mode in ("state", "state_dict"):
            extra["obj_to_goal_pos"] = info["tcp_to_next"]
            extra["oracle_info"] = self._oracle_info()
            in_set = self.in_set()
            for index, actor in enumerate(self.objects):
                extra[f"cube_{index}_pose"] = actor.pose.p
                extra[f"touched_{index}"] = self.touched[:, index, None].float()
                extra[f"cube_{index}_in_seq"] = in_set[:, index, None].float()
                extra[f"next_target_{index}"] = (info["next_cube"] == index)[:, None].float()
        return extra

    def compute_dense_reward(self, obs, action, info):
        reaching = 1 - torch.tanh(10.0 * torch.linalg.norm(info["tcp_to_next"], dim=-1))
        still = 1 - torch.tanh(5.0 * self.arm_speed())
        if self.ordered:
            matches = self.touch_order == self.sequence
            correct = matches.sum(-1)
            wrong = ((self.touch_order != -1) & ~matches).sum(-1)
        else:
            in_set = self.in_set()
            correct = (self.touched & in_set).sum(-1)
            wrong = (self.touched & ~in_set).sum(-1)
        reward = reaching + 0.5 * still + 90.0 * correct / self.set_size - 10.0 * wrong
        reward = reward * (self.elapsed_steps >= self.choice_start)
        return torch.where(info["success"], self.MAX_DENSE_REWARD, reward)


# -- ShellGame ----------------------------------------------------------------------------------


class ShellGameEnv(MikasaTableEnv):
    """A ball shown at one of three places; cups cover all three; act on the ball's cup (`mode`)."""

    BALL_RADIUS = 0.02
    CUP_SPACING = 0.2
    CUP_CENTRE_HEIGHT = 0.04
    GOAL_OFFSET = {"touch": None, "push": (0.1, 0.0, 0.025), "pick": (0.0, 0.0, 0.125)}
    """Where the cup must go, from the ball (Push: 10 cm forward; Pick: 12.5 cm up)."""
    MAX_DENSE_REWARD_OF = {"touch": 3.0, "push": 4.0, "pick": 75.0}

    def __init__(self, *args, mode: str = "touch", **kwargs):
        if mode not in self.GOAL_OFFSET:
            raise ValueError(f"ShellGame mode must be one of {', '.join(self.GOAL_OFFSET)}, got {mode!r}")
        self.mode = mode
        self.MAX_DENSE_REWARD = self.MAX_DENSE_REWARD_OF[mode]
        super().__init__(*args, **kwargs)

    @property
    def first_success_step(self) -> int:
        return SHOW_STEPS if self.mode == "touch" else SHOW_STEPS + 1

    def _build_objects(self):
        self.ball = build_object(self.scene, "red_ball", [Part("sphere", (self.BALL_RADIUS,))], (1.0, 0.0, 0.0),
                                 [0.0, 0.0, LIFT])
        self.cups = [build_object(self.scene, f"cup_{index}", CUP_PARTS, CUP_COLOR, [0.0, 0.3 * index, LIFT + 0.5])
                     for index in range(3)]
        self.objects = [self.ball, *self.cups]

    def _allocate_state(self):
        self.target = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.centre = torch.zeros(self.num_envs, 2, device=self.device)

    def _draw_episodes(self, env_idx):
        batch = len(env_idx)
        self.target[env_idx] = torch.randint(3, (batch,), device=self.device)
        self.centre[env_idx] = torch.rand(batch, 2, device=self.device) * 0.2 - 0.1

    def cup_places(self) -> torch.Tensor:
        """[num_envs, 3, 3]: where each cup stands (left, centre, right: y - 20 cm, y, y + 20 cm)."""
        offsets = torch.tensor([-self.CUP_SPACING, 0.0, self.CUP_SPACING], device=self.device)
        xy = self.centre[:, None, :] + torch.stack([torch.zeros_like(offsets), offsets], dim=-1)
        z = torch.full((self.num_envs, 3, 1), self.CUP_CENTRE_HEIGHT, device=self.device)
        return torch.cat([xy, z], dim=-1)

    def ball_place(self) -> torch.Tensor:
        rows = torch.arange(self.num_envs, device=self.device)
        place = self.cup_places()[rows, self.target].clone()
        place[:, 2] = self.BALL_RADIUS
        return place

    def goal_position(self) -> torch.Tensor:
        """[num_envs, 3]: where Push and Pick want the ball's cup."""
        return self.ball_place() + torch.tensor(self.GOAL_OFFSET[self.mode], device=self.device)

    def _phase(self):
        step = self.elapsed_steps.long()
        cups = self.cup_places()
        lifted = cups + torch.tensor([0.0, 0.0, LIFT], device=self.device)
        cups = torch.where((step < SHOW_STEPS)[:, None, None], lifted, cups)
        positions = torch.cat([self.ball_place()[:, None], cups], dim=1)
        put = torch.cat([(step == 0)[:, None], (step <= SHOW_STEPS)[:, None].expand(-1, 3)], dim=1)
        return positions, put

    def target_cup_pose(self) -> torch.Tensor:
        poses = torch.stack([cup.pose.raw_pose for cup in self.cups], dim=1)
        return poses[torch.arange(self.num_envs, device=self.device), self.target]

    def _judge(self):
        cup = self.target_cup_pose()[:, :3]
        tcp_to_cup = cup - self.agent.tcp.pose.p
        if self.mode == "touch":
            is_obj_placed = torch.linalg.norm(tcp_to_cup, dim=-1) <= 0.08
        else:
            is_obj_placed = torch.linalg.norm(self.goal_position() - cup, dim=-1) <= 0.08
        is_robot_static = self.agent.is_static(STATIC_JOINT_SPEED)
        counting = self.elapsed_steps >= self.first_success_step
        info = {"success": is_obj_placed & is_robot_static & counting, "is_obj_placed": is_obj_placed,
                "is_robot_static": is_robot_static, "tcp_to_cup": tcp_to_cup}
        if self.mode == "pick":
            grasping = torch.stack([self.agent.is_grasping(cup) for cup in self.cups], dim=1)
            info["is_grasped"] = grasping[torch.arange(self.num_envs, device=self.device), self.target]
        return info

    def _oracle_info(self):
        return self.target.float()[:, None]

    def _get_obs_extra(self, info):
        extra = {"tcp_pose": self.agent.tcp.pose.raw_pose}
        if self.obs_mode in ("state", "state_dict"):
            if self.mode != "touch":
                extra["goal_pos"] = self.goal_position()
            extra["obj_pose"] = self.target_cup_pose()
            extra["ball_pose"] = self.ball.pose.raw_pose
            extra["oracle_info"] = self._oracle_info()
            if self.mode == "pick":
                extra["is_grasped"] = info["is_grasped"].float()[:, None]
        return extra

    def compute_dense_reward(self, obs, action, info):
        tcp_to_cup = torch.linalg.norm(info["tcp_to_cup"], dim=-1)
        still = 1 - torch.tanh(5.0 * self.arm_speed())
        placed, static = info["is_obj_placed"].float(), info["is_robot_static"].float()
        if self.mode == "touch":
            reward = (1 - torch.tanh(5.0 * tcp_to_cup)) + still * placed + static * placed
        else:
            cup_to_goal = torch.linalg.norm(self.goal_position() - self.target_cup_pose()[:, :3], dim=-1)
            place = 1 - torch.tanh(5.0 * cup_to_goal)
            reaching = 1 - torch.tanh(10.0 * tcp_to_cup)
            if self.mode == "push":
                reached = (tcp_to_cup <= 0.08).float()
                reward = reaching + 2 * place * reached + 0.2 * still * placed + 0.2 * static * placed
            else:
                reached = (tcp_to_cup <= 0.04).float()
                reward = (3 * reaching + 2 * reached + 30 * place * reached + 5 * still * placed * reached
                          + 5 * static * placed * reached)
        reward = torch.where(info["success"], self.MAX_DENSE_REWARD, reward)
        return reward * (self.elapsed_steps >= SHOW_STEPS)


# -- Intercept, InterceptGrab -------------------------------------------------------------------


class InterceptEnv(MikasaTableEnv):
    """A ball rolls across the table (towards +y, at a speed of the level's range); Intercept: knock
    it so that it stops within 10 cm (in xy) of a target disc; InterceptGrab: grasp it with the arm
    static. Nothing is hidden: a single image shows where the ball is, not how fast it rolls."""

    BALL_RADIUS = 0.02
    GOAL_RADIUS = 0.1
    SPEEDS = {"slow": (0.25, 0.5), "medium": (0.5, 0.75), "fast": (0.75, 1.0)}
    objects_have_phases = False

    def __init__(self, *args, speed: str = "slow", grab: bool = False, **kwargs):
        if speed not in self.SPEEDS:
            raise ValueError(f"speed must be one of {', '.join(self.SPEEDS)}, got {speed!r}")
        self.speed_range, self.grab = self.SPEEDS[speed], grab
        self.MAX_DENSE_REWARD = 300.0 if grab else 30.0
        super().__init__(*args, **kwargs)

    def _build_objects(self):
        self.ball = build_object(self.scene, "ball", [Part("sphere", (self.BALL_RADIUS,))], (1.0, 0.0, 0.0),
                                 [0.0, 0.0, self.BALL_RADIUS])
        self.objects = [self.ball]
        self.goal_marker = None
        # The target disc is a picture (no collision), so there is none without a renderer.
        if not self.grab and self.scene.can_render():
            self.goal_marker = actors.build_red_white_target(
                self.scene, radius=self.GOAL_RADIUS, thickness=1e-5, name="goal_region", add_collision=False,
                body_type="kinematic", initial_pose=sapien.Pose(p=[0.0, 0.0, 0.1]))

    def _allocate_state(self):
        self.initial_velocity = torch.zeros(self.num_envs, 3, device=self.device)
        self.goal = torch.zeros(self.num_envs, 3, device=self.device)
        self.reached = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        """Intercept's dense reward: the TCP has been at the hitting point (latched for the episode)."""

    def _draw_episodes(self, env_idx):
        batch = len(env_idx)
        uniform = lambda: torch.rand(batch, device=self.device)  # noqa: E731
        start = torch.stack([(uniform() * 2 - 1) * 0.15 - 0.2, uniform() * 0.25 - 0.9,
                             torch.full((batch,), (1 if self.grab else 2) * self.BALL_RADIUS, device=self.device)], -1)
        low, high = self.speed_range
        velocity = torch.stack([uniform() * 0.05, uniform() * (high - low) + low,
                                torch.zeros(batch, device=self.device)], -1)
        self.ball.set_pose(Pose.create_from_pq(p=start))
        self.ball.set_linear_velocity(velocity)
        self.ball.set_angular_velocity(torch.zeros(batch, 3, device=self.device))
        self.initial_velocity[env_idx] = velocity
        self.goal[env_idx] = torch.stack([start[:, 0] + 0.2, uniform() * 0.4 - 0.2,
                                          torch.full((batch,), 1e-3, device=self.device)], -1)
        if self.goal_marker is not None:
            self.goal_marker.set_pose(Pose.create_from_pq(p=self.goal[env_idx], q=euler2quat(0, np.pi / 2, 0)))
        self.reached[env_idx] = False

    def _judge(self):
        if self.grab:
            is_ball_grasped = self.agent.is_grasping(self.ball)
            is_robot_static = self.agent.is_static(STATIC_JOINT_SPEED)
            return {"success": is_ball_grasped & is_robot_static, "is_ball_grasped": is_ball_grasped,
                    "is_robot_static": is_robot_static}
        ball_to_goal = torch.linalg.norm(self.ball.pose.p[:, :2] - self.goal[:, :2], dim=-1)
        return {"success": ball_to_goal < self.GOAL_RADIUS}

    def _oracle_info(self):
        return self.initial_velocity

    def _get_obs_extra(self, info):
        extra = {"tcp_pose": self.agent.tcp.pose.raw_pose}
        if self.obs_mode in ("state", "state_dict"):
            ball = self.ball.pose
            if not self.grab:
                extra["goal_pos"] = self.goal
            extra["ball_pose"] = ball.raw_pose
            extra["oracle_info"] = self._oracle_info()
            if self.grab:
                extra["is_ball_grasped"] = info["is_ball_grasped"].float()[:, None]
            extra["ball_linear_vel"] = self.ball.linear_velocity
            extra["ball_angular_vel"] = self.ball.angular_velocity
            extra["tcp_to_ball_pos"] = ball.p - self.agent.tcp.pose.p
            if self.grab:
                extra["gripper_width"] = self.agent.robot.get_qpos()[:, -2:].sum(-1, keepdim=True)
                extra["relative_velocity"] = self.ball.linear_velocity - self.agent.tcp.linear_velocity
            else:
                extra["ball_to_goal_pos"] = self.goal - ball.p
        return extra

    def compute_dense_reward(self, obs, action, info):
        ball, tcp = self.ball.pose.p, self.agent.tcp.pose.p
        if self.grab:
            return self._grab_reward(ball, tcp, info)
        away_from_goal = torch.nn.functional.normalize(ball - self.goal, dim=-1)
        hitting_point = ball + away_from_goal * (self.BALL_RADIUS + 0.05)
        tcp_to_hitting_point = torch.linalg.norm(hitting_point - tcp, dim=-1)
        self.reached |= tcp_to_hitting_point < 0.04
        reaching = 1 - torch.tanh(2 * tcp_to_hitting_point)
        place = 1 - torch.tanh(torch.linalg.norm(ball[:, :2] - self.goal[:, :2], dim=-1))
        reward = torch.where(self.reached, 5.0 * place, 2.0 * reaching)
        return torch.where(info["success"], self.MAX_DENSE_REWARD, reward)

    def _grab_reward(self, ball, tcp, info):
        tcp_to_ball = torch.linalg.norm(ball - tcp, dim=-1)
        reward = 10 * (1 - torch.tanh(3 * tcp_to_ball))
        width = self.agent.robot.get_qpos()[:, -2:].sum(-1)
        offset = (tcp - ball).abs()
        radius = self.BALL_RADIUS
        in_gripper = ((offset[:, 0] <= 2 * radius) & (offset[:, 1] <= 2 * radius) & (offset[:, 2] <= 1.5 * radius)
                      & (tcp_to_ball <= 2 * radius) & (width >= 2 * radius))
        reward = reward + 10.0 * in_gripper
        very_close = tcp_to_ball <= 1.25 * radius
        reward = reward + very_close * 30.0 * (1 - tcp_to_ball / (3 * radius))
        width_error = ((width - 2 * radius).abs() - 0.02).clamp(min=0.0)
        reward = reward + in_gripper * 90.0 * torch.exp(-5.0 * width_error)
        reward = reward + 45.0 * (in_gripper & (width <= 2 * radius + 0.02))
        reward = reward + 100.0 * info["is_ball_grasped"]
        return torch.where(info["success"], self.MAX_DENSE_REWARD, reward)


# -- RotateLenient, RotateStrict ----------------------------------------------------------------


def build_target_marker(scene, name: str, radius: float, color: tuple[float, float, float]):
    """A flat target of rings (`color`, white, `color`) for the cameras only: no collision, kinematic;
    None where the scene cannot render (it would be invisible and untouchable anyway)."""
    if not scene.can_render():
        return None
    builder = scene.create_actor_builder()
    for index, (scale, rgb) in enumerate(((1.0, color), (0.8, (1.0, 1.0, 1.0)), (0.6, color), (0.4, (1.0, 1.0, 1.0)),
                                          (0.2, color))):
        material = sapien.render.RenderMaterial(base_color=[*rgb, 1.0])
        builder.add_cylinder_visual(radius=radius * scale, half_length=5e-6 + index * 1e-5, material=material)
    builder.initial_pose = sapien.Pose(p=[0.0, 0.0, LIFT])
    return builder.build_kinematic(name=name)


class RotateEnv(MikasaTableEnv):
    """A symmetric blue peg (24 x 5 x 5 cm) lies on the table at a random place and heading; turn it by
    the target angle (given in the observation as `prompt`) relative to its starting heading, to
    within 0.1 rad, with the arm static. The peg looks the same at every heading, so the agent must
    remember where it started. Lenient: the peg may move; Strict: its centre must stay within 5 cm
    (in x and in y) of where it started. Pos: targets in [0.1, pi/2]; PosNeg: +-[0.1, pi/4]."""

    PEG_HALF_LENGTH, PEG_HALF_WIDTH = 0.12, 0.025
    ANGLE_THRESHOLD = 0.1
    POSITION_THRESHOLD = 0.05
    PEG_COLOR = (12 / 255, 42 / 255, 160 / 255)
    objects_have_phases = False

    def __init__(self, *args, strict: bool = False, negative_targets: bool = False, **kwargs):
        self.strict, self.negative_targets = strict, negative_targets
        self.MAX_DENSE_REWARD = 100.0 if strict else 25.0
        super().__init__(*args, **kwargs)

    def _build_objects(self):
        half = (self.PEG_HALF_LENGTH / 2, self.PEG_HALF_WIDTH, self.PEG_HALF_WIDTH)
        parts = [Part("box", half, (-self.PEG_HALF_LENGTH / 2, 0.0, 0.0)),
                 Part("box", half, (self.PEG_HALF_LENGTH / 2, 0.0, 0.0))]
        self.peg = build_object(self.scene, "peg", parts, self.PEG_COLOR, [0.0, 0.0, self.PEG_HALF_WIDTH])
        self.objects = [self.peg]

    def _allocate_state(self):
        self.target_angle = torch.zeros(self.num_envs, device=self.device)
        self.initial_heading = torch.zeros(self.num_envs, device=self.device)
        self.initial_position = torch.zeros(self.num_envs, 3, device=self.device)

    def _draw_episodes(self, env_idx):
        batch = len(env_idx)
        draw = torch.rand(batch, device=self.device)
        if self.negative_targets:
            # As the original: one draw gives both the sign (> 0.5: positive) and the magnitude.
            magnitude = self.ANGLE_THRESHOLD + draw * (0.25 * np.pi - self.ANGLE_THRESHOLD)
            target = torch.where(draw > 0.5, magnitude, -magnitude)
        else:
            target = self.ANGLE_THRESHOLD + draw * (0.5 * np.pi - self.ANGLE_THRESHOLD)
        self.target_angle[env_idx] = target.half().float()  # the original keeps it in float16
        heading = torch.rand(batch, device=self.device) * 2 * np.pi
        position = torch.cat([torch.rand(batch, 2, device=self.device) * 0.2 - 0.1,
                              torch.full((batch, 1), self.PEG_HALF_WIDTH, device=self.device)], dim=-1)
        quaternion = torch.stack([torch.cos(heading / 2), torch.zeros_like(heading), torch.zeros_like(heading),
                                  torch.sin(heading / 2)], dim=-1)
        self.peg.set_pose(Pose.create_from_pq(p=position, q=quaternion))
        self.initial_heading[env_idx] = heading
        self.initial_position[env_idx] = position

    def _judge(self):
        heading = matrix_to_euler_angles(quaternion_to_matrix(self.peg.pose.q), "XYZ")[:, 2]
        relative_angle = _wrap_angle(heading - self.initial_heading)
        angle_error = _wrap_angle(self.target_angle - relative_angle)
        correct_angle = angle_error.abs() < self.ANGLE_THRESHOLD
        is_robot_static = self.agent.is_static(STATIC_JOINT_SPEED)
        position_error = self.peg.pose.p[:, :2] - self.initial_position[:, :2]
        position_ok = (position_error.abs() < self.POSITION_THRESHOLD).all(-1)
        success = correct_angle & is_robot_static & (self.elapsed_steps > SHOW_STEPS)
        if self.strict:
            success &= position_ok
        return {"success": success, "angle_error": angle_error, "relative_angle": relative_angle,
                "correct_angle": correct_angle, "is_robot_static": is_robot_static,
                "position_error": position_error, "position_ok": position_ok}

    def _get_obs_extra(self, info):
        extra = {"tcp_pose": self.agent.tcp.pose.raw_pose}
        if self.obs_mode in ("state", "state_dict"):
            extra["oracle_info"] = info["angle_error"][:, None]
            extra["peg_pose"] = self.peg.pose.raw_pose
        extra["prompt"] = self.target_angle[:, None]
        return extra

    def compute_dense_reward(self, obs, action, info):
        tcp_to_peg = torch.linalg.norm(self.peg.pose.p - self.agent.tcp.pose.p, dim=-1)
        correct, static = info["correct_angle"], info["is_robot_static"]
        if not self.strict:
            reached = tcp_to_peg < 0.1
            reward = (torch.exp(-5.0 * tcp_to_peg) + reached * 15.0 * torch.exp(-1.5 * info["angle_error"].abs())
                      + 5.0 * correct + 2.0 * (correct & static))
        else:
            reached = tcp_to_peg < 0.04
            position_reward = torch.exp(-5.0 * info["position_error"].abs()).sum(-1)
            turning = reached & info["position_ok"]
            reward = (0.5 * torch.exp(-3.0 * tcp_to_peg) + reached * 5.0 * position_reward
                      + turning * 35.0 * torch.exp(-1.0 * info["angle_error"].abs())
                      + 10.0 * (correct & turning) + 5.0 * (correct & static & turning))
        return torch.where(info["success"], self.MAX_DENSE_REWARD, reward)


def _wrap_angle(angle: torch.Tensor) -> torch.Tensor:
    """Angles into [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


# -- TakeItBack ---------------------------------------------------------------------------------


class TakeItBackEnv(MikasaTableEnv):
    """Push a green cube from where it starts into a red target (8 cm radius); once it has been
    there the target turns purple; then bring the cube back to where it started (within 8 cm, in
    xy). The starting region is marked only for the human-view camera, never for the agent's."""

    CUBE_HALFSIZE = 0.02
    GOAL_RADIUS = 0.08
    MAX_DENSE_REWARD = 30.0
    objects_have_phases = False

    def _build_objects(self):
        self.cube = build_object(self.scene, "cube", shape_parts("cube"), (0.0, 1.0, 0.0),
                                 [0.0, 0.0, self.CUBE_HALFSIZE])
        self.objects = [self.cube]
        self.start_marker = build_target_marker(self.scene, "initial_region", self.GOAL_RADIUS, (0.0, 0.0, 1.0))
        self.goal_marker = build_target_marker(self.scene, "goal_region", self.GOAL_RADIUS,
                                               (194 / 255, 19 / 255, 22 / 255))
        self.reached_marker = build_target_marker(self.scene, "changed_goal_region", self.GOAL_RADIUS,
                                                  (147 / 255, 0.0, 211 / 255))
        if self.start_marker is not None:
            self._hidden_objects.append(self.start_marker)

    def _allocate_state(self):
        self.start = torch.zeros(self.num_envs, 3, device=self.device)
        self.goal = torch.zeros(self.num_envs, 3, device=self.device)
        self.goal_reached = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        """The cube has been in the goal this episode (latched)."""

    def _draw_episodes(self, env_idx):
        batch = len(env_idx)
        uniform = lambda: torch.rand(batch, device=self.device)  # noqa: E731
        lane = torch.randint(-1, 2, (batch,), device=self.device).float()
        flat = torch.full((batch,), 1e-3, device=self.device)
        start = torch.stack([(uniform() - 0.5) * 0.1, lane * 0.1 + uniform() * 0.05, flat], -1)
        goal = torch.stack([uniform() * 0.05 + 0.2, (uniform() - 0.5) * 0.05, flat], -1)
        self.start[env_idx], self.goal[env_idx] = start, goal
        self.goal_reached[env_idx] = False
        self.cube.set_pose(Pose.create_from_pq(p=start + torch.tensor([0.0, 0.0, self.CUBE_HALFSIZE - 1e-3],
                                                                      device=self.device)))
        flat_turn = euler2quat(0, np.pi / 2, 0)
        lifted = torch.tensor([0.0, 0.0, LIFT], device=self.device)
        markers = ((self.start_marker, start), (self.goal_marker, goal), (self.reached_marker, goal + lifted))
        for marker, place in markers:
            if marker is not None:
                marker.set_pose(Pose.create_from_pq(p=place, q=flat_turn))

    def _judge(self):
        if self.reached_marker is not None:  # the target turns purple the step after the cube first got there
            lifted = torch.tensor([0.0, 0.0, LIFT], device=self.device)
            flat_turn = torch.tensor(euler2quat(0, np.pi / 2, 0), dtype=torch.float32, device=self.device)
            reached = self.goal_reached[:, None]
            self.goal_marker.set_pose(Pose.create_from_pq(p=torch.where(reached, self.goal + lifted, self.goal),
                                                          q=flat_turn.expand(self.num_envs, 4)))
            self.reached_marker.set_pose(Pose.create_from_pq(p=torch.where(reached, self.goal, self.goal + lifted),
                                                             q=flat_turn.expand(self.num_envs, 4)))
        cube_xy = self.cube.pose.p[:, :2]
        in_goal = torch.linalg.norm(cube_xy - self.goal[:, :2], dim=-1) < self.GOAL_RADIUS
        self.goal_reached |= in_goal
        returned = torch.linalg.norm(cube_xy - self.start[:, :2], dim=-1) < self.GOAL_RADIUS
        return {"success": returned & self.goal_reached, "goal_achieved": in_goal,
                "goal_reached_status": self.goal_reached.clone()}

    def _get_obs_extra(self, info):
        extra = {"tcp_pose": self.agent.tcp.pose.raw_pose}
        if self.obs_mode in ("state", "state_dict"):
            extra["goal_pos"] = self.goal
            extra["cube_pose"] = self.cube.pose.raw_pose
            extra["oracle_info"] = self.start
            extra["goal_reached_status"] = info["goal_reached_status"].float()[:, None]
        return extra

    def compute_dense_reward(self, obs, action, info):
        cube, tcp = self.cube.pose.p, self.agent.tcp.pose.p
        push_point = cube + torch.tensor([-self.CUBE_HALFSIZE - 0.005, 0.0, 0.0], device=self.device)
        pull_point = cube + torch.tensor([self.CUBE_HALFSIZE + 0.01, 0.0, 0.0], device=self.device)
        to_push, to_pull = torch.linalg.norm(push_point - tcp, dim=-1), torch.linalg.norm(pull_point - tcp, dim=-1)
        into_goal = 1 - torch.tanh(5.0 * torch.linalg.norm(cube[:, :2] - self.goal[:, :2], dim=-1))
        back_home = 1 - torch.tanh(5.0 * torch.linalg.norm(cube[:, :2] - self.start[:, :2], dim=-1))
        before = 2.0 * (1 - torch.tanh(5.0 * to_push)) + (to_push < 0.01) * 5.0 * into_goal
        after = 10.0 * (1 - torch.tanh(5.0 * to_pull)) + (to_pull < 0.01) * 15.0 * back_home
        reward = torch.where(info["goal_reached_status"], after, before)
        return torch.where(info["success"], self.MAX_DENSE_REWARD, reward)


# -- registration -------------------------------------------------------------------------------

REMEMBER_STEPS, SHELL_GAME_STEPS, COLOR_SET_STEPS, INTERCEPT_STEPS, ROTATE_STEPS, TAKE_IT_BACK_STEPS = (
    60, 90, 120, 90, 90, 180)

for _count in (3, 5, 9):
    register_env(f"memrl/RememberColor{_count}-v0", max_episode_steps=REMEMBER_STEPS,
                 num_colors=_count)(RememberColorEnv)
    register_env(f"memrl/RememberShape{_count}-v0", max_episode_steps=REMEMBER_STEPS,
                 num_shapes=_count)(RememberShapeEnv)
for _shapes, _colors in ((3, 2), (3, 3), (5, 3)):
    register_env(f"memrl/RememberShapeAndColor{_shapes}x{_colors}-v0", max_episode_steps=REMEMBER_STEPS,
                 num_shapes=_shapes, num_colors=_colors)(RememberShapeAndColorEnv)
for _mode in ("touch", "push", "pick"):
    register_env(f"memrl/ShellGame{_mode.capitalize()}-v0", max_episode_steps=SHELL_GAME_STEPS,
                 mode=_mode)(ShellGameEnv)
for _count in (3, 5, 7):
    register_env(f"memrl/BunchOfColors{_count}-v0", max_episode_steps=COLOR_SET_STEPS, set_size=_count,
                 presentation="bunch")(ColorSetEnv)
    register_env(f"memrl/SeqOfColors{_count}-v0", max_episode_steps=COLOR_SET_STEPS, set_size=_count)(ColorSetEnv)
    register_env(f"memrl/ChainOfColors{_count}-v0", max_episode_steps=COLOR_SET_STEPS, set_size=_count,
                 ordered=True)(ColorSetEnv)
for _strict in (False, True):
    for _negative in (False, True):
        register_env(f"memrl/Rotate{'Strict' if _strict else 'Lenient'}Pos{'Neg' if _negative else ''}-v0",
                     max_episode_steps=ROTATE_STEPS, strict=_strict, negative_targets=_negative)(RotateEnv)
register_env("memrl/TakeItBack-v0", max_episode_steps=TAKE_IT_BACK_STEPS)(TakeItBackEnv)
for _speed in InterceptEnv.SPEEDS:
    register_env(f"memrl/Intercept{_speed.capitalize()}-v0", max_episode_steps=INTERCEPT_STEPS,
                 speed=_speed)(InterceptEnv)
    register_env(f"memrl/InterceptGrab{_speed.capitalize()}-v0", max_episode_steps=INTERCEPT_STEPS, speed=_speed,
                 grab=True)(InterceptEnv)
