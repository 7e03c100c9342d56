"""The mutation check: each entry of ``MUTATIONS`` changes the code in one meaningful way, and the fast tests named
beside it must fail on the changed code. A mutant that leaves them green is a hole in the suite.

    python -m tests.mutation_check              # every mutant, 2 at a time; exit 1 if any survives
    python -m tests.mutation_check -k triplet   # only the mutants whose name contains "triplet"
    python -m tests.mutation_check --list       # the table

Each mutation is an exact text replacement. It names no file: its text is looked up in every tracked text file
(this table excepted), so it follows code that moves, and it must occur exactly once in the whole repository (a
mutation whose text no longer occurs, or occurs twice, is stale: the check fails and says so). Each mutant gets its
own copy of the
tracked files (``git ls-files``, as they are in the working tree) in a temporary folder, next to a link to the
``shared/`` reference folder that sits beside the repository (the importer tests read its key lists); there the
mutation is applied and ``python -m pytest -q -x -p no:cacheprovider <kill tests>`` runs with a timeout. Killed
means pytest reports failed tests (exit status 1); a passing run is a survivor, and anything else (a skipped kill
test, a collection error, an unknown test id, a timeout) is reported as an error of the check. Before judging, the
union of the kill tests must pass on an unchanged copy (a test that fails anyway would kill every mutant).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2
TIMEOUT_S = 600


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (which must occur exactly once among the tracked files, wherever it is) by ``new``; the
    ``kill`` tests must then fail."""

    name: str
    old: str
    new: str
    kill: tuple[str, ...]


T = "tests/"
R = T + "engine/test_recipe.py::"
MUTATIONS: tuple[Mutation, ...] = (
    # ---- the first audit's table
    Mutation("predict_on_label resizes logits with nearest",
             'mode="bilinear", align_corners=True)[0]', 'mode="nearest")[0]',
             (T + "engine/test_metrics.py::test_ori_resize_upsamples_bilinear_align_corners",)),
    Mutation("predict_on_label resizes bilinear without align_corners",
             'mode="bilinear", align_corners=True)[0]', 'mode="bilinear", align_corners=False)[0]',
             (T + "engine/test_metrics.py::test_label_grid_resize_is_bilinear_align_corners",)),
    Mutation("evaluator squashes logits onto the original label",
             "return predict_on_label(logits, size, ori_size=size) if ori_resize",
             "return predict_on_label(logits, size) if ori_resize",
             (T + "engine/test_engine_evaluator.py::"
                  "test_spatially_varying_prediction_on_non_square_images_matches_hand_counts",)),
    Mutation("evaluator squashes logits (seen from predict.py)",
             "return predict_on_label(logits, size, ori_size=size) if ori_resize",
             "return predict_on_label(logits, size) if ori_resize",
             (T + "tools/test_predict.py::test_synth_round_trip_gives_the_evaluators_prediction",)),
    Mutation("training loss with foreground and background swapped",
             "        label = query_label.long()\n",
             "        label = torch.where(query_label == 255, 255, 1 - query_label).long()\n",
             (T + "model/test_model_shapes.py::test_training_losses_are_cross_entropy_of_the_query_label_with_255_ignored",)),
    Mutation("scale, rotate, blur and flip deleted from the training transform",
             "            RandomScale(*scale),\n"
             "            RandomRotate(cfg.rotate_min, cfg.rotate_max, fill, ignore),\n"
             "            RandomGaussianBlur(),\n"
             "            RandomHorizontalFlip(),\n", "",
             (T + "data/test_data_transform.py::test_scale_rotation_and_flip_are_drawn_in_range_at_the_stated_rates",
              T + "data/test_data_transform.py::test_blur_changes_the_image_about_half_the_time")),
    Mutation("engine autocast forced off",
             'with autocast(self.ctx.device, self.options.amp):', 'with autocast(self.ctx.device, "off"):',
             (T + "engine/test_engine_loop.py::test_training_forward_runs_in_the_amp_precision[bf16-dtype1]",)),
    # ---- metrics and evaluator scoring
    Mutation("ignore pixels counted in IoU",
             "valid = label != ignore_index", "valid = torch.ones_like(label, dtype=torch.bool)",
             (T + "engine/test_metrics.py::test_ignored_pixels_count_nowhere",)),
    Mutation("class IoU from the background counts",
             "torch.stack([inter_fg, union_fg, torch.ones_like(inter_fg)])",
             "torch.stack([inter_bg, union_bg, torch.ones_like(inter_fg)])",
             (T + "engine/test_metrics.py::test_class_iou_sums_counts_over_episodes_then_averages_classes",)),
    Mutation("FB-IoU is the foreground IoU alone",
             "return float(self.fb.iou().nanmean())", "return float(self.fb.iou()[1])",
             (T + "engine/test_metrics.py::test_class_iou_sums_counts_over_episodes_then_averages_classes",)),
    Mutation("evaluator scores against the batch's padded label",
             'label = batch["query_label_ori"][b, :h0, :w0]', 'label = batch["query_label_ori"][b]',
             (T + "engine/test_engine_evaluator.py::test_spatially_varying_prediction_on_non_square_images_matches_hand_counts[3]",)),
    # ---- transforms
    Mutation("rotated label interpolated linearly",
             "label = cv2.warpAffine(label, matrix, (width, height), flags=cv2.INTER_NEAREST,",
             "label = cv2.warpAffine(label, matrix, (width, height), flags=cv2.INTER_LINEAR,",
             (T + "data/test_data_transform.py::test_scale_rotation_and_flip_are_drawn_in_range_at_the_stated_rates",)),
    Mutation("test geometry pads around the centre",
             "_pad(image, label, 0, self.size - new_h, 0, self.size - new_w,",
             "_pad(image, label, (self.size - new_h) // 2, self.size - new_h - (self.size - new_h) // 2, "
             "(self.size - new_w) // 2, self.size - new_w - (self.size - new_w) // 2,",
             (T + "data/test_data_transform.py::test_test_geometry_resizes_longer_side_and_pads_top_left",)),
    Mutation("binary label loses the ignore value",
             "    out[label == ignore_label] = ignore_label\n", "",
             (T + "data/test_data_transform.py::test_binary_and_bbox_masks",)),
    Mutation("uniform_retry crop accepts 50% of the target",
             "UNIFORM_KEEP_FRACTION = 0.85", "UNIFORM_KEEP_FRACTION = 0.5",
             (T + "data/test_protocol_rules.py::test_uniform_retry_keeps_85_percent_of_a_target_that_fits",)),
    # ---- losses
    Mutation("triplet loss: 255 cells are not negatives",
             "negative = ~positive", "negative = masks == 0",
             (T + "model/test_model_hpm_gim.py::test_triplet_loss_hand_computed_on_2d_features",)),
    Mutation("triplet loss takes the easiest positive",
             'distances.masked_fill(~positive, float("-inf")).amax(dim=1)',
             'distances.masked_fill(~positive, float("inf")).amin(dim=1)',
             (T + "model/test_model_hpm_gim.py::test_triplet_loss_hand_computed_on_2d_features",)),
    Mutation("auxiliary loss summed over the levels",
             "for aux in aux_logits]).mean()", "for aux in aux_logits]).sum()",
             (T + "model/test_model_shapes.py::test_training_losses_are_cross_entropy_of_the_query_label_with_255_ignored",)),
    Mutation("support pixels labelled 255 taken as foreground",
             "weights = (masks == 1).to(", "weights = (masks != 0).to(",
             (T + "model/test_model_shapes.py::test_k_shot_identical_supports_equal_one_shot_and_eval_is_deterministic",)),
    # ---- HPM
    Mutation("HPM: query not reweighted by the prior",
             "main = average_pool(main * prior, levels[level + 1])", "main = average_pool(main, levels[level + 1])",
             (T + "model/test_model_hpm_gim.py::test_hierarchical_priors_match_the_reference_chain",)),
    Mutation("HPM: mask chain restarts from layer3's mask at every level",
             "mask = bilinear(mask, size)", "mask = bilinear(start_mask, size)",
             (T + "model/test_model_hpm_gim.py::test_hierarchical_priors_match_the_reference_chain",)),
    Mutation("HPM: K-shot prior is the maximum over shots",
             "prior = _normalised_priors(main, level_directions).mean(dim=1, keepdim=True)",
             "prior = _normalised_priors(main, level_directions).amax(dim=1, keepdim=True)",
             (T + "model/test_model_hpm_gim.py::test_k_shot_first_prior_is_the_mean_of_the_per_shot_priors",)),
    # ---- IFM
    Mutation("IFM: beta_conv residual dropped",
             "merge = self.beta_conv[level](merge) + merge", "merge = self.beta_conv[level](merge)",
             (T + "model/test_model_hpm_gim.py::test_information_fusion_matches_the_reference_fusion",)),
    Mutation("IFM: next level reads the merge at its own bin",
             "previous = bilinear(merge, size)", "previous = merge",
             (T + "model/test_model_hpm_gim.py::test_information_fusion_matches_the_reference_fusion",)),
    # ---- checkpoint importer
    Mutation("importer leaves the IFM modules at the top level",
             'mapped[f"ifm.{key}"] = value', "mapped[key] = value",
             (T + "tools/test_checkpoint_import.py::test_key_mapping_prefers_the_top_level_backbone_copy",)),
    Mutation("importer keeps GIG's reference name",
             '_MIANET_RENAMES = {"GIG.": "gig.",', '_MIANET_RENAMES = {"GIG.": "GIG.",',
             (T + "tools/test_checkpoint_import.py::test_key_mapping_prefers_the_top_level_backbone_copy",)),
    # ---- FSS-1000
    Mutation("FSS-1000 stage 1 keeps 255 as ignore (a base class's target)",
             "return -1 if len(base_classes(dataset, fold, coco_split_style)) >= ignore_label else ignore_label",
             "return ignore_label",
             (T + "data/test_fss1000.py::test_episodes_and_stage1_targets_come_from_the_masks",)),
    Mutation("FSS-1000 tested on its validation classes",
             'return "test" if mode == "test" and benchmark(dataset).own_test_list else "val"', 'return "val"',
             (T + "data/test_fss1000.py::test_episodes_and_stage1_targets_come_from_the_masks",)),
    Mutation("FSS-1000 masks read as class-id maps",
             "binary_label(classes, 1 if self.binary_masks else class_id,", "binary_label(classes, class_id,",
             (T + "data/test_fss1000.py::test_episodes_and_stage1_targets_come_from_the_masks",)),
    # ---- what the data files say: repeated and absolute list paths, EXIF, support masks, hints
    Mutation("list repeats kept (no warning)",
             "        if key not in first:\n", "        if True:\n",
             (T + "data/test_list_integrity.py::test_episodes_from_a_list_with_doubled_items_never_use_the_query_as_support",)),
    Mutation("sampler compares list indices, not image paths",
             "if self.image_ids[i] != self.image_ids[query]]", "if i != query]",
             (T + "data/test_list_integrity.py::test_the_sampler_itself_never_picks_the_query_image",)),
    Mutation("absolute pool paths accepted",
             "    if os.path.isabs(path):\n", "    if False:\n",
             (T + "data/test_list_integrity.py::test_absolute_paths_in_pool_lists_are_refused_naming_file_and_line",)),
    Mutation("printed commands leave paths unquoted",
             "{shlex.quote(str(value))}", "{value}",
             (T + "data/test_list_integrity.py::test_printed_commands_survive_a_path_with_spaces",)),
    Mutation("EXIF orientation applied to photos",
             "flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION", "flags = cv2.IMREAD_COLOR",
             (T + "data/test_exif_and_label_files.py::test_tagged_photos_are_read_on_the_stored_grid_in_episodes",
              T + "tools/test_predict_masks.py::test_a_tagged_query_is_segmented_on_its_stored_grid")),
    Mutation("size mismatch of a tagged photo does not name EXIF",
             "image and label must have the same height and width{exif_note(image_path)}",
             "image and label must have the same height and width",
             (T + "data/test_exif_and_label_files.py::test_a_label_drawn_on_the_turned_picture_is_refused_naming_exif",)),
    Mutation("label messages name no dataset tool",
             "values = read_label(label_path, remedy)", "values = read_label(label_path)",
             (T + "data/test_exif_and_label_files.py::test_a_16_bit_label_names_the_tool_of_its_dataset",)),
    Mutation("support mask: every class is the object",
             "    return binary_label(values, class_id, ignore_label)\n",
             "    return binary_label(np.where((values != 0) & (values != ignore_label), class_id, values), class_id, "
             "ignore_label)\n",
             (T + "tools/test_predict_masks.py::test_with_a_class_name_a_class_id_mask_marks_exactly_that_class",)),
    Mutation("support mask: a VOC ignore border read as the object",
             "if present <= {0, 255} and _like_a_border(values == 255):", "if False:",
             (T + "tools/test_predict_masks.py::test_a_thin_255_border_is_not_an_object_unless_forced",)),
    # ---- FSS-1000 split, identity by class names, class-vector order
    Mutation("FSS-1000 split written before the class names are checked",
             '    vectors = None\n    if source != "published":',
             '    write_split(list_root, split, source)\n    vectors = None\n    if source != "published":',
             (T + "data/test_fss1000.py::test_a_table_row_is_needed_for_a_name_with_unknown_words_and_all_are_reported_before_writing",)),
    Mutation("run identity blind to the training classes",
             "    if any(k in differing for k in _EXPLAINED_BY):",
             "    differing = [k for k in differing if k not in ('train_classes', 'class_split')]\n"
             "    if any(k in differing for k in _EXPLAINED_BY):",
             (T + "data/test_fss1000.py::test_a_stage1_of_another_class_split_is_refused_naming_the_classes",)),
    Mutation("class vectors of another class order accepted",
             "    if recorded == list(names):\n        return", "    if True:\n        return",
             (T + "data/test_fss1000.py::test_hsnet_split_files_are_checked_and_the_published_ones_are_the_default",)),
    # ---- the optimisation recipe as run (tests/engine/test_recipe.py: the real entry points and configs)
    Mutation("total loss ignores aux_weight",
             "loss = loss_main + self.aux_weight * loss_aux + loss_triplet", "loss = loss_main + loss_aux + loss_triplet",
             (R + "test_loss_is_the_weighted_sum_of_its_parts[meta-pascal-vgg16_bn]",)),
    Mutation("triplet loss weighted by aux_weight",
             "loss = loss_main + self.aux_weight * loss_aux + loss_triplet",
             "loss = loss_main + self.aux_weight * (loss_aux + loss_triplet)",
             (R + "test_loss_is_the_weighted_sum_of_its_parts[meta-pascal-vgg16_bn]",)),
    Mutation("SGD without weight decay",
             "momentum=options.momentum,\n                                         weight_decay=options.weight_decay)",
             "momentum=options.momentum)",
             (R + "test_each_parameter_is_in_the_sgd_group_of_its_rate_momentum_and_weight_decay[base-pascal-vgg16_bn]",)),
    Mutation("SGD without momentum",
             "lr=schedule.lr, momentum=options.momentum,", "lr=schedule.lr,",
             (R + "test_each_parameter_is_in_the_sgd_group_of_its_rate_momentum_and_weight_decay[base-pascal-vgg16_bn]",)),
    Mutation("stage-1 validation mIoU counts the background",
             '"miou": scores.miou(list(range(1, num_classes)))', '"miou": scores.miou()',
             (R + "test_best_pth_is_chosen_by_the_references_validation_number[base-pascal-vgg16_bn]",)),
    Mutation("stage 2 selects best.pth by FB-IoU",
             'return {"miou": summary["miou"], "fbiou": summary["fbiou"]}',
             'return {"miou": summary["fbiou"], "fbiou": summary["fbiou"]}',
             (R + "test_best_pth_is_chosen_by_the_references_validation_number[meta-pascal-vgg16_bn]",)),
    Mutation("stage 2 validates on base-class episodes",
             'return "test" if mode == "test" and benchmark(dataset).own_test_list else "val"',
             'return "test" if mode == "test" and benchmark(dataset).own_test_list else "base_val"',
             (R + "test_best_pth_is_chosen_by_the_references_validation_number[meta-pascal-vgg16_bn]",)),
    Mutation("best.pth follows the last validation, not the best",
             'if self.last_metrics["miou"] > self.best["miou"]:', "if True:",
             (R + "test_best_pth_holds_the_best_validation_not_the_last",)),
    Mutation("poly power ignored (torch's default 1)",
             "total_iters=self.total, power=options.power)", "total_iters=self.total)",
             (R + "test_poly_rate_of_a_capped_run_resumed_is_the_uninterrupted_one[base-pascal-vgg16_bn]",)),
    Mutation("poly rate stepped once per epoch",
             "        self.scheduler.step()\n        self.iteration += 1\n",
             "        self.iteration += 1\n        if self.iteration % self.iters_per_epoch == 0:\n"
             "            self.scheduler.step()\n",
             (R + "test_poly_rate_of_a_capped_run_resumed_is_the_uninterrupted_one[base-pascal-vgg16_bn]",)),
    Mutation("poly schedule spans the uncapped run under max_iters",
             "PolynomialLR(self.optimizer, total_iters=self.total,",
             "PolynomialLR(self.optimizer, total_iters=schedule.epochs * self.iters_per_epoch,",
             (R + "test_poly_rate_of_a_capped_run_resumed_is_the_uninterrupted_one[base-pascal-vgg16_bn]",)),
    Mutation("resume restarts the poly schedule",
             '            self.scheduler.load_state_dict(state["scheduler"])\n', "",
             (R + "test_poly_rate_of_a_capped_run_resumed_is_the_uninterrupted_one[base-pascal-vgg16_bn]",)),
    Mutation("stage 2 scheduled over stage 1's epochs",
             "schedule=Schedule(cfg.epochs, cfg.batch_size, cfg.base_lr, cfg.max_iters, batch_key",
             "schedule=Schedule(cfg.base_epochs, cfg.batch_size, cfg.base_lr, cfg.max_iters, batch_key",
             (R + "test_poly_rate_spans_every_epoch_of_an_uncapped_run_resumed[meta-pascal-vgg16_bn]",)),
    Mutation("stage-1 head group not multiplied",
             '"lr": lr * head_lr_mult}', '"lr": lr}',
             (R + "test_each_parameter_is_in_the_sgd_group_of_its_rate_momentum_and_weight_decay[base-pascal-vgg16_bn]",)),
    Mutation("stage-1 backbone at the stage-2 rate",
             "parameters=model.parameter_groups(cfg.base_learner_lr, cfg.base_head_lr_mult),",
             "parameters=model.parameter_groups(cfg.base_lr, cfg.base_head_lr_mult),",
             (R + "test_each_parameter_is_in_the_sgd_group_of_its_rate_momentum_and_weight_decay[base-pascal-vgg16_bn]",)),
    Mutation("stage 1 takes stage 2's batch",
             "schedule=Schedule(cfg.base_epochs, cfg.base_batch_size,", "schedule=Schedule(cfg.base_epochs, cfg.batch_size,",
             (R + "test_every_step_takes_one_global_batch_in_training_mode[base-pascal-vgg16_bn]",)),
    Mutation("PASCAL stage 2 at the reference's configured 0.005 (its x10 forgotten)",
             "base_lr: 0.05              # the effective rate: the reference configures",
             "base_lr: 0.005             # the effective rate: the reference configures",
             (R + "test_each_parameter_is_in_the_sgd_group_of_its_rate_momentum_and_weight_decay[meta-pascal-vgg16_bn]",)),
    Mutation("COCO stage-1 head at 10x like PASCAL's",
             "base_learner_lr: 0.0025\nbase_head_lr_mult: 1.0\n", "base_learner_lr: 0.0025\nbase_head_lr_mult: 10.0\n",
             (R + "test_each_parameter_is_in_the_sgd_group_of_its_rate_momentum_and_weight_decay[base-coco-vgg16_bn]",)),
    Mutation("stage 2 optimises every parameter",
             "parameters=list(model.trainable_parameters()),", "parameters=list(model.parameters()),",
             (R + "test_each_parameter_is_in_the_sgd_group_of_its_rate_momentum_and_weight_decay[meta-pascal-vgg16_bn]",)),
    Mutation("MIANet's trainable parameters include the backbone",
             'return (p for name, p in self.named_parameters() if not name.startswith("backbone."))',
             "return iter(self.parameters())",
             (R + "test_each_parameter_is_in_the_sgd_group_of_its_rate_momentum_and_weight_decay[meta-pascal-vgg16_bn]",)),
    Mutation("backbone BatchNorm statistics updated in stage 2",
             "        if self.freeze_backbone_bn:\n            self.backbone.eval()\n",
             "        if False:\n            self.backbone.eval()\n",
             (R + "test_gradients_reach_every_trained_parameter_and_never_the_backbone[meta-pascal-vgg16_bn]",)),
    Mutation("gradients accumulate over steps (zero_grad dropped)",
             "        self.optimizer.zero_grad(set_to_none=self.step_model is self.model)\n", "",
             (R + "test_gim_learns_through_the_main_loss_and_through_the_triplet_loss[meta-pascal-vgg16_bn]",)),
    Mutation("general prototype detached before the fusion",
             "self.ifm(query_feat, general, priors, aux=self.training)",
             "self.ifm(query_feat, general.detach(), priors, aux=self.training)",
             (R + "test_gim_learns_through_the_main_loss_and_through_the_triplet_loss[meta-pascal-vgg16_bn]",)),
    Mutation("triplet anchor detached from GIG",
             "loss_triplet = triplet_loss(general, local,", "loss_triplet = triplet_loss(general.detach(), local,",
             (R + "test_gim_learns_through_the_main_loss_and_through_the_triplet_loss[meta-pascal-vgg16_bn]",)),
    Mutation("training mode not restored after a validation",
             "        self.model.train()\n        with tqdm(", "        with tqdm(",
             (R + "test_every_step_takes_one_global_batch_in_training_mode[base-pascal-vgg16_bn]",)),
    Mutation("stage 2 sees the same episodes every epoch",
             'make_train_set=lambda epoch: EpisodeDataset(cfg, "train", seed=epoch_seed(cfg.seed, epoch)),',
             'make_train_set=lambda epoch: EpisodeDataset(cfg, "train", seed=cfg.seed),',
             (R + "test_every_epoch_draws_new_data[meta-pascal-vgg16_bn]",)),
    Mutation("stage 1 sees the same augmentations every epoch",
             'BaseClassDataset(cfg, "train", seed=epoch_seed(cfg.seed, epoch))', 'BaseClassDataset(cfg, "train", seed=cfg.seed)',
             (R + "test_every_epoch_draws_new_data[base-pascal-vgg16_bn]",)),
    Mutation("the loop keeps epoch 0's dataset",
             "        if epoch > 0:\n            self.train_set = self.job.make_train_set(epoch)",
             "        if epoch < 0:\n            self.train_set = self.job.make_train_set(epoch)",
             (R + "test_every_epoch_draws_new_data[base-pascal-vgg16_bn]",)),
    Mutation("COCO stage 2 at batch 4",
             "# stage 2\nepochs: 50\nbatch_size: 8\n", "# stage 2\nepochs: 50\nbatch_size: 4\n",
             (R + "test_every_step_takes_one_global_batch_in_training_mode[meta-coco-vgg16_bn]",)),
    Mutation("aux_weight 0.4 in the schema (PSPNet's auxiliary weight)", "aux_weight: 1.0\n", "aux_weight: 0.4\n",
             (R + "test_loss_is_the_weighted_sum_of_its_parts[meta-pascal-vgg16_bn]",)),
    Mutation("triplet margin 0.3 in the schema", "triplet_margin: 0.5\n", "triplet_margin: 0.3\n",
             (R + "test_loss_is_the_weighted_sum_of_its_parts[meta-pascal-vgg16_bn]",)),
    Mutation("stage 1 augmented with stage 2's scale range",
             "scale = (cfg.base_scale_min, cfg.base_scale_max) if base else (cfg.scale_min, cfg.scale_max)",
             "scale = (cfg.scale_min, cfg.scale_max)",
             (R + "test_training_augmentation_is_the_references[base-pascal-resnet50]",)),
    # ---- found by planting bugs beside the recipe: data, image reading, model regularisation
    Mutation("photos decoded in BGR order",
             "    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)\n\n\ndef _packed", "    return image\n\n\ndef _packed",
             (T + "data/test_exif_and_label_files.py::test_photos_are_read_in_rgb_order[png]",)),
    Mutation("stage-1 novel pixels ignored instead of background",
             "lookup = np.zeros(256, dtype=np.uint8)",
             "lookup = np.full(256, spec.ignore_label, dtype=np.uint8)\n            lookup[0] = 0",
             (T + "data/test_data_dataset.py::test_stage1_targets_novel_classes_are_background_not_ignored",)),
    Mutation("query order the same for every seed",
             "rng = np.random.default_rng(np.random.SeedSequence([self.seed]))\n            self._order_cache",
             "rng = np.random.default_rng(np.random.SeedSequence([0]))\n            self._order_cache",
             (T + "data/test_data_dataset.py::test_episode_is_a_pure_function_of_seed_and_index",)),
    Mutation("query features skip down_features' dropout",
             "query_feat = self.down_features[2](query.mid)", "query_feat = query.mid",
             (T + "model/test_model_shapes.py::"
                  "test_dropouts_are_the_references_and_down_features_dropout_reaches_query_and_supports",)),
    Mutation("PSPNet classifier dropout 0.5", "ignore_label: int, dropout: float = 0.1) -> None:",
             "ignore_label: int, dropout: float = 0.5) -> None:",
             (T + "model/test_model_shapes.py::"
                  "test_dropouts_are_the_references_and_down_features_dropout_reaches_query_and_supports",)),
    Mutation("GIG's second dropout 0.5", "nn.Linear(hidden, channels), nn.Dropout(0.3),",
             "nn.Linear(hidden, channels), nn.Dropout(0.5),",
             (T + "model/test_model_shapes.py::"
                  "test_dropouts_are_the_references_and_down_features_dropout_reaches_query_and_supports",)),
    # ---- config schema
    Mutation("base.yaml amp unquoted (YAML reads off as false)",
             'amp: "off"  ', "amp: off    ",
             (T + "common/test_config_system.py::test_defaults_are_the_values_written_in_base_yaml",)),
    # ---- mixed precision, the reference test geometry, the chunked stage-1 loss
    Mutation("HPM: support direction under autocast (its 1e12 weights become float16 inf)",
             "    with autocast_off(support.device):", '    with autocast_off(torch.device("meta")):',
             (T + "model/test_model_precision.py::"
                  "test_hpm_priors_under_fp16_autocast_are_finite_and_close_to_float32[float32_masks-layer4_12]",)),
    Mutation("HPM: support direction in float16 (clamp_min(1e-12) gives 0)",
             "        support = at_least_float32(support)\n", "",
             (T + "model/test_model_precision.py::"
                  "test_hpm_priors_under_fp16_autocast_are_finite_and_close_to_float32[float16_masks-layer4_12]",)),
    Mutation("HPM: query norm in float16 (0/0 at a zero query position)",
             "        query, directions = at_least_float32(query), at_least_float32(directions)\n",
             "        directions = directions.to(query.dtype)\n",
             (T + "model/test_model_precision.py::"
                  "test_hpm_priors_under_fp16_autocast_are_finite_and_close_to_float32[float32_masks-layer4_12]",)),
    Mutation("prototype summed under float16 autocast",
             "    with autocast_off(features.device):", '    with autocast_off(torch.device("meta")):',
             (T + "model/test_model_precision.py::test_masked_average_under_fp16_autocast_does_not_overflow",)),
    Mutation("triplet loss normalises float16 features",
             "F.normalize(at_least_float32(local_features), dim=2)", "F.normalize(local_features, dim=2)",
             (T + "model/test_model_precision.py::"
                  "test_triplet_loss_on_float16_features_with_a_zero_cell_is_finite_and_close_to_float32",)),
    Mutation("reference test geometry pads the image with the mean",
             "REFERENCE_IMAGE_FILL = (0.0, 0.0, 0.0)", "REFERENCE_IMAGE_FILL = tuple(255.0 * m for m in IMAGENET_MEAN)",
             (T + "data/test_data_transform.py::test_reference_geometry_equals_the_transcribed_resized_val",)),
    Mutation("reference test geometry does not floor the sides to a multiple of 8",
             "REFERENCE_SIDE_MULTIPLE = 8", "REFERENCE_SIDE_MULTIPLE = 1",
             (T + "data/test_data_transform.py::test_reference_geometry_equals_the_transcribed_resized_val",)),
    Mutation("chunked stage-1 loss averaged over every pixel, ignored ones included",
             "    return mean(total, pixels)", "    return mean(total, torch.tensor(labels.numel()))",
             (T + "model/test_pspnet_loss.py::test_chunked_loss_and_gradient_equal_the_plain_batched_form",)),
    Mutation("chunked stage-1 loss without checkpointing (every chunk's upsampled logits kept for backward)", "from torch.utils.checkpoint import checkpoint",
             "checkpoint = lambda function, *args, **options: function(*args)  # noqa: E731",
             (T + "model/test_pspnet_loss.py::"
                  "test_no_operation_creates_the_whole_batchs_upsampled_logits_and_none_is_kept_for_backward",)),
    Mutation("ablation verdict calls a module's loss a gain",
             "{'helps' if difference > 0 else 'hurts'}", "{'helps' if difference != 0 else 'hurts'}",
             (T + "runs/test_ablation.py::"
                  "test_module_verdicts_say_what_each_module_does_alone_and_on_top_of_the_other",)),
    Mutation("ablation counts a row above the baseline when one seed is",
             "if min(row.miou) > base_miou]", "if max(row.miou) > base_miou]",
             (T + "runs/test_ablation.py::"
                  "test_module_verdicts_say_what_each_module_does_alone_and_on_top_of_the_other",)),
    Mutation("ablation records claim the runner's thread count for runs it did not make",
             'self.threads if wall and status == "done in" else None', "self.threads",
             (T + "runs/test_ablation.py::test_a_finished_run_without_its_record_is_recorded_without_running",)),
)


class StaleMutation(Exception):
    """A mutation's text does not occur exactly once among the tracked files."""


TABLE = Path(__file__).resolve().relative_to(REPO).as_posix()
"""This module, left out of the search: it holds every mutation's text."""


def tracked_files(repo: Path) -> list[str]:
    done = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: git ls-files failed in {repo} ({done.stderr.strip()}); "
                         "run the check in a git checkout")
    return [name for name in done.stdout.split("\0") if name and (repo / name).is_file()]


def tracked_texts(repo: Path, files: list[str]) -> dict[str, str]:
    """The text of every tracked file that is UTF-8 text, by its path in the repository, this table excepted."""
    texts = {}
    for name in files:
        if name != TABLE:
            try:
                texts[name] = (repo / name).read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
    return texts


def locate(old: str, texts: dict[str, str]) -> str:
    """The one file of ``texts`` that holds ``old``; :class:`StaleMutation` unless ``old`` occurs exactly once in
    them all."""
    counts = {name: text.count(old) for name, text in texts.items() if old in text}
    if sum(counts.values()) != 1:
        where = ", ".join(f"{name} ({count})" for name, count in counts.items()) or "no file"
        raise StaleMutation(f"the text to replace must occur once in the repository, found in {where}: {old!r}")
    return next(iter(counts))


def apply(mutation: Mutation, root: Path, texts: dict[str, str]) -> str:
    """Apply ``mutation`` to the copy at ``root`` of the files ``texts`` holds; returns the file it changed."""
    path = locate(mutation.old, texts)
    (root / path).write_text(texts[path].replace(mutation.old, mutation.new), encoding="utf-8")
    return path


def make_copy(repo: Path, files: list[str], folder: Path) -> Path:
    """The tracked files under ``folder/repo``, with ``folder/shared`` linked to the ``shared/`` beside ``repo``."""
    root = folder / "repo"
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, root / name)
    shared = repo.parent / "shared"
    if shared.is_dir():
        (folder / "shared").symlink_to(shared)
    return root


@dataclass
class Outcome:
    label: str                # "killed", "SURVIVED", "ERROR", or "passed"/"FAILED" for the unchanged copy
    seconds: float
    detail: str               # the failing test (killed), or what went wrong


def run_tests(root: Path, tests: tuple[str, ...], stop_first: bool) -> tuple[int | None, str, float]:
    """(pytest exit status, or None on timeout; its output; seconds) for ``tests`` run in ``root``."""
    threads = str(max(1, (os.cpu_count() or 1) // WORKERS))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "--basetemp", str(root.parent / "pytest"), *(["-x"] if stop_first else []), *tests]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, "", time.perf_counter() - started
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - started


def first_failure(output: str) -> str:
    failed = [line.split()[1] for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return failed[0] if failed else "?"


def judge_mutant(mutation: Mutation, repo: Path, files: list[str], texts: dict[str, str], scratch: Path) -> Outcome:
    folder = Path(tempfile.mkdtemp(prefix="mutant_", dir=scratch))
    root = make_copy(repo, files, folder)
    try:
        apply(mutation, root, texts)
    except StaleMutation as err:
        return Outcome("ERROR", 0.0, f"stale mutation: {err}")
    status, output, seconds = run_tests(root, mutation.kill, stop_first=True)
    if status is None:
        return Outcome("ERROR", seconds, f"timed out after {TIMEOUT_S} s")
    if status == 1:
        return Outcome("killed", seconds, first_failure(output))
    if status == 0:
        skipped = [line for line in output.splitlines() if line.startswith("SKIPPED ")]
        if skipped:
            return Outcome("ERROR", seconds, f"kill tests skipped here, nothing judged: {skipped[0]}")
        return Outcome("SURVIVED", seconds, "every kill test passed")
    tail = " | ".join(output.strip().splitlines()[-3:])
    return Outcome("ERROR", seconds, f"pytest exit status {status} (not a test failure): {tail}")


def judge_unchanged(tests: tuple[str, ...], repo: Path, files: list[str], scratch: Path) -> Outcome:
    root = make_copy(repo, files, Path(tempfile.mkdtemp(prefix="unchanged_", dir=scratch)))
    status, output, seconds = run_tests(root, tests, stop_first=False)
    skipped = [line for line in output.splitlines() if line.startswith("SKIPPED ")]
    if status == 0 and not skipped:
        return Outcome("passed", seconds, f"{len(tests)} kill tests")
    if status == 0:
        return Outcome("FAILED", seconds, f"kill tests skipped: {skipped[0]}")
    what = "timed out" if status is None else f"exit status {status}: {first_failure(output)}"
    return Outcome("FAILED", seconds, what)


def where(mutation: Mutation, texts: dict[str, str]) -> str:
    """The file a mutation changes, or ``stale`` when its text does not occur exactly once."""
    try:
        return locate(mutation.old, texts)
    except StaleMutation:
        return "stale"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-k", dest="select", default="", help="only the mutants whose name contains this text")
    parser.add_argument("--list", action="store_true", help="print the mutations and their kill tests, run nothing")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.select.lower() in m.name.lower()]
    files = tracked_files(REPO)
    texts = tracked_texts(REPO, files)
    if args.list:
        for number, mutation in enumerate(chosen, start=1):
            print(f"{number:2d}. {mutation.name} ({where(mutation, texts)}) <- {', '.join(mutation.kill)}")
        return 0
    if not chosen:
        print(f"no mutant's name contains {args.select!r}")
        return 2
    kill_tests = tuple(dict.fromkeys(test for m in chosen for test in m.kill))
    started = time.perf_counter()
    print(f"{len(chosen)} mutants, {len(kill_tests)} kill tests, {WORKERS} at a time", flush=True)
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as scratch, ThreadPoolExecutor(WORKERS) as pool:
        unchanged = pool.submit(judge_unchanged, kill_tests, REPO, files, Path(scratch))
        futures = [pool.submit(judge_mutant, m, REPO, files, texts, Path(scratch)) for m in chosen]
        outcomes = []
        for number, (mutation, future) in enumerate(zip(chosen, futures), start=1):
            outcome = future.result()
            outcomes.append(outcome)
            print(f"{number:2d}. {outcome.label:8s} {outcome.seconds:5.0f} s  {mutation.name}: {outcome.detail}",
                  flush=True)
        baseline = unchanged.result()
    print(f"unchanged copy: {baseline.label} ({baseline.detail}) in {baseline.seconds:.0f} s")
    killed = sum(o.label == "killed" for o in outcomes)
    print(f"{killed} of {len(chosen)} killed in {time.perf_counter() - started:.0f} s")
    for mutation, outcome in zip(chosen, outcomes):
        if outcome.label != "killed":
            print(f"not killed: {mutation.name} ({where(mutation, texts)}): {outcome.label}, {outcome.detail}")
    return 0 if killed == len(chosen) and baseline.label == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
