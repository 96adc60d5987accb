"""English and Chinese strings of the web UI. Read-only tables; `text(key, lang)` picks one.

LABELS name components (label, or value for buttons/markdown); MESSAGES are what handlers report
(`{placeholders}` filled with str.format). A missing Chinese string falls back to English.
"""

from __future__ import annotations

from types import MappingProxyType

LANGS = ("en", "zh")

LABELS = MappingProxyType({
    "lang": ("Language", "语言"),
    "title": ("## tuneforge — fine-tune, chat and export in the browser",
              "## tuneforge — 在浏览器中微调、对话与导出"),
    "model_name": ("Model", "模型"),
    "model_path": ("Model path or hub id", "模型路径或 Hub 名称"),
    "finetuning_type": ("Fine-tuning method", "微调方法"),
    "checkpoints": ("Adapters / checkpoints", "适配器 / 检查点"),
    "refresh": ("Refresh", "刷新"),
    "quantization_bit": ("Quantization bits", "量化位数"),
    "quantization_method": ("Quantization method", "量化方法"),
    "template": ("Chat template", "对话模板"),
    "rope_scaling": ("RoPE scaling", "RoPE 缩放"),
    "booster": ("Booster", "加速方式"),
    "tab_train": ("Train", "训练"),
    "tab_eval": ("Evaluate", "评估"),
    "tab_chat": ("Chat", "对话"),
    "tab_export": ("Export", "导出"),
    "stage": ("Stage", "训练阶段"),
    "dataset_dir": ("Dataset folder", "数据目录"),
    "dataset": ("Datasets", "数据集"),
    "preview_data": ("Preview data", "预览数据"),
    "data_preview": ("Rows as the model sees them (trained text highlighted)", "模型看到的样本（高亮为训练部分）"),
    "learning_rate": ("Learning rate", "学习率"),
    "num_train_epochs": ("Epochs", "训练轮数"),
    "max_steps": ("Max steps (0 = use epochs)", "最大步数（0 = 按轮数）"),
    "max_grad_norm": ("Max grad norm", "最大梯度范数"),
    "max_samples": ("Max samples per dataset", "每个数据集最大样本数"),
    "compute_type": ("Compute type", "计算类型"),
    "cutoff_len": ("Cutoff length", "截断长度"),
    "per_device_train_batch_size": ("Batch size", "批大小"),
    "gradient_accumulation_steps": ("Gradient accumulation", "梯度累积"),
    "val_size": ("Validation size", "验证集比例"),
    "lr_scheduler_type": ("LR scheduler", "学习率调度器"),
    "logging_steps": ("Logging steps", "日志间隔"),
    "save_steps": ("Save steps", "保存间隔"),
    "warmup_steps": ("Warmup steps", "预热步数"),
    "lora_section": ("LoRA settings", "LoRA 参数"),
    "lora_rank": ("LoRA rank", "LoRA 秩"),
    "lora_alpha": ("LoRA alpha", "LoRA 缩放系数"),
    "lora_dropout": ("LoRA dropout", "LoRA 随机丢弃"),
    "lora_target": ("LoRA modules (all = every linear layer)", "LoRA 作用模块（all = 全部线性层）"),
    "use_rslora": ("rsLoRA", "rsLoRA"),
    "use_dora": ("DoRA", "DoRA"),
    "freeze_section": ("Freeze settings", "部分参数微调设置"),
    "freeze_trainable_layers": ("Trainable layers", "可训练层数"),
    "freeze_trainable_modules": ("Trainable modules", "可训练模块"),
    "pref_section": ("Preference settings (dpo, kto)", "偏好训练设置（dpo, kto）"),
    "pref_beta": ("Beta", "Beta 参数"),
    "pref_ftx": ("SFT loss weight", "SFT 损失权重"),
    "pref_loss": ("Loss type", "损失类型"),
    "grpo_section": ("GRPO settings (grpo)", "GRPO 设置（grpo）"),
    "num_generations": ("Completions per prompt", "每个提示的采样数"),
    "reward_funcs": ("Reward functions (accuracy, format, length, file.py:function)",
                     "奖励函数（accuracy, format, length, file.py:function）"),
    "beta": ("KL penalty (beta)", "KL 惩罚（beta）"),
    "loss_type": ("GRPO loss type", "GRPO 损失类型"),
    "extra_section": ("Extra arguments", "其它参数"),
    "extra_args": ("Extra config keys as JSON", "以 JSON 给出的其它配置项"),
    "output_dir": ("Output folder", "输出目录"),
    "args_name": ("Saved arguments (a name)", "已保存的参数（名称）"),
    "args_overwrite": ("Overwrite saved arguments of this name", "覆盖同名的已保存参数"),
    "allow_outside": ("Allow an output folder outside {root}", "允许使用 {root} 之外的输出目录"),
    "allow_remote_code": ("Allow trust_remote_code (runs the model repository's own code)",
                          "允许 trust_remote_code（运行模型仓库自带的代码）"),
    "preview_cmd": ("Preview command", "预览命令"),
    "save_args": ("Save arguments", "保存参数"),
    "load_args": ("Load arguments", "载入参数"),
    "start": ("Start", "开始"),
    "abort": ("Abort", "中断"),
    "command": ("Command and YAML", "命令与 YAML"),
    "progress": ("Progress", "进度"),
    "loss_chart": ("Loss", "损失"),
    "log": ("Log", "日志"),
    "eval_dataset_dir": ("Dataset folder", "数据目录"),
    "eval_mode": ("Evaluation", "评估方式"),
    "eval_mode_predict": ("Batch prediction (BLEU / ROUGE)", "批量预测（BLEU / ROUGE）"),
    "eval_mode_recall": ("Recall — did it learn?", "记忆检查 — 学会了吗？"),
    "eval_dataset": ("Datasets (prediction: the rows to answer · recall: the training data to ask about)",
                     "数据集（预测：要回答的样本 · 记忆检查：要提问的训练数据）"),
    "eval_cutoff_len": ("Cutoff length", "截断长度"),
    "eval_max_samples": ("Max samples per dataset", "每个数据集最大样本数"),
    "eval_max_new_tokens": ("Max new tokens", "最大生成长度"),
    "eval_top_p": ("Top-p", "Top-p 采样值"),
    "eval_temperature": ("Temperature", "温度系数"),
    "eval_output_dir": ("Output folder", "输出目录"),
    "recall_hint": ("The model above (with the chosen adapter / checkpoint) answers the training questions of the "
                    "selected datasets greedily: exact match, character similarity, per-field accuracy for "
                    "`key:value` answers and the worst answers; then single-field questions in new phrasings "
                    "(held-out) and general questions answered before and after fine-tuning (drift). "
                    "Runs `tuneforge eval recall`.",
                    "上方的模型（含所选适配器 / 检查点）以贪心解码回答所选数据集中的训练问题：完全匹配率、字符相似度、"
                    "`key:value` 答案的逐字段准确率和最差的回答；然后是换了问法的单字段问题（留出问题），"
                    "以及微调前后对通用问题的回答（漂移）。运行的是 `tuneforge eval recall`。"),
    "recall_samples": ("Training questions to ask (0 = all)", "提问的训练问题数（0 = 全部）"),
    "recall_heldout": ("Held-out questions (one field each, new phrasings)", "留出问题（每题一个字段，新的问法）"),
    "recall_drift": ("Drift on general questions (base model vs fine-tune)", "通用问题漂移（基础模型 vs 微调后）"),
    "recall_report": ("Recall report", "记忆检查报告"),
    "eval_start": ("Start evaluation", "开始评估"),
    "eval_abort": ("Abort", "中断"),
    "eval_results": ("Results", "评估结果"),
    "eval_allow_outside": ("Allow an output folder outside {root}", "允许使用 {root} 之外的输出目录"),
    "load_model": ("Load model", "加载模型"),
    "unload_model": ("Unload model", "卸载模型"),
    "chat_status": ("Model status", "模型状态"),
    "system": ("System prompt", "系统提示词"),
    "chatbot": ("Chat", "对话"),
    "query": ("Message", "输入"),
    "image": ("Image (vision-language models: sent with the next message)", "图片（视觉语言模型：随下一条消息发送）"),
    "send": ("Send", "发送"),
    "clear": ("Clear history", "清空历史"),
    "max_new_tokens": ("Max new tokens", "最大生成长度"),
    "temperature": ("Temperature", "温度系数"),
    "top_p": ("Top-p", "Top-p 采样值"),
    "do_sample": ("Sample (off = greedy)", "采样（关闭 = 贪心）"),
    "export_dir": ("Export folder", "导出目录"),
    "export_size": ("Shard size (GB)", "分块大小（GB）"),
    "export_format": ("Format", "格式"),
    "export_quantization_bit": ("Export quantization bits (GPTQ)", "导出量化等级（GPTQ）"),
    "export_quantization_dataset": ("Calibration data (text column)", "导出量化数据集"),
    "export_btn": ("Export", "开始导出"),
    "export_info": ("Export result", "导出结果"),
    "export_allow_outside": ("Allow an export folder outside {root}", "允许使用 {root} 之外的导出目录"),
})

MESSAGES = MappingProxyType({
    "idle": ("No job yet.", "尚无任务。"),
    "starting": ("Starting: loading the model and data…", "启动中：正在加载模型和数据…"),
    "running": ("Training…", "训练中…"),
    "aborting": ("Stopping after the current step…", "将在当前步结束后停止…"),
    "finished": ("Finished. Saved in {output_dir}", "训练完成，已保存到 {output_dir}"),
    "aborted": ("Aborted; the last checkpoint in {output_dir} is intact.", "已中断；{output_dir} 中的最新检查点完好。"),
    "failed": ("Failed: {message}", "失败：{message}"),
    "error": ("Error: {message}", "错误：{message}"),
    "started": ("Started `{command}`", "已启动 `{command}`"),
    "saved_args": ("Arguments `{name}` saved to {path}", "参数 `{name}` 已保存到 {path}"),
    "loaded_args": ("Arguments `{name}` loaded from {path}", "已从 {path} 载入参数 `{name}`"),
    "args_no_name": ("Give the arguments a name (letters, digits, `.`, `_`, `-`); they are saved in {folder}",
                     "请为参数起一个名称（字母、数字、`.`、`_`、`-`）；参数保存在 {folder}"),
    "args_bad_name": ("`{name}` is not a name for saved arguments: use only letters, digits, `.`, `_` and `-` "
                      "(a name, not a path); arguments are saved in and loaded from {folder} only",
                      "`{name}` 不是有效的参数名称：只能使用字母、数字、`.`、`_` 和 `-`（是名称，不是路径）；"
                      "参数只保存在 {folder} 并只从那里载入"),
    "args_exists": ("Arguments named `{name}` already exist ({path}); tick “Overwrite saved arguments of this "
                    "name” to replace them, or choose another name",
                    "名为 `{name}` 的参数已存在（{path}）；勾选“覆盖同名的已保存参数”以替换，或换一个名称"),
    "args_missing": ("No saved arguments named `{name}` in {folder}; saved names: {names}",
                     "{folder} 中没有名为 `{name}` 的已保存参数；已保存的名称：{names}"),
    "outside_root": ("The folder {folder} is outside the output root {root}; choose a folder inside {root}, or "
                     "tick “Allow … outside {root}” if you mean it",
                     "文件夹 {folder} 不在输出根目录 {root} 之内；请选择 {root} 之内的文件夹，"
                     "或确有需要时勾选“允许使用 {root} 之外的…目录”"),
    "remote_code": ("`{option}` lets the model repository run its own Python code on this machine; tick “Allow "
                    "trust_remote_code” to confirm, or remove it from the extra arguments",
                    "`{option}` 会让模型仓库在本机运行其自带的 Python 代码；请勾选“允许 trust_remote_code”确认，"
                    "或从其它参数中删除它"),
    "auth_required": ("the web UI would serve {address} to other machines without a password; add "
                      "--auth user:password (or set {env}=user:password), or serve on 127.0.0.1 only",
                      "网页界面将在没有密码的情况下向其它机器提供 {address}；请加上 --auth 用户名:密码"
                      "（或设置 {env}=用户名:密码），或只在 127.0.0.1 上提供服务"),
    "all_interfaces": (" (every network interface of this machine)", "（本机的所有网络接口）"),
    "public_link": (" and a public gradio.live link", " 以及一个公开的 gradio.live 链接"),
    "exposed_warning": ("[tuneforge] WARNING: the web UI is exposed beyond this machine: it serves {address}. "
                        "Anyone with the password of user `{user}` can train, export and write files under {root}.",
                        "[tuneforge] 警告：网页界面对本机以外开放：服务地址 {address}。"
                        "任何知道用户 `{user}` 密码的人都可以训练、导出并在 {root} 下写入文件。"),
    "no_file": ("File not found: {path}", "找不到文件：{path}"),
    "model_loaded": ("Loaded: {description}", "已加载：{description}"),
    "model_unloaded": ("No model loaded.", "未加载模型。"),
    "loading_model": ("Loading the model…", "正在加载模型…"),
    "exporting": ("Exporting…", "正在导出…"),
    "exported": ("Exported to {path}", "已导出到 {path}"),
    "no_rows": ("No rows to show.", "没有可显示的样本。"),
    "run_new": ("new run: {folder}", "新的训练：{folder}"),
    "run_new_existing": ("new run in the existing folder {folder}", "在已有文件夹 {folder} 中开始新的训练"),
    "run_resume": ("{folder} exists: training resumes from {checkpoint} (step {step} of {total})",
                   "{folder} 已存在：从 {checkpoint} 继续训练（第 {step} / {total} 步）"),
    "run_conflict": ("{folder} already holds a trained model and no checkpoint to resume from; choose another "
                     "output folder (or add \"overwrite_output_dir\": true to the extra arguments)",
                     "{folder} 中已有训练好的模型且没有可继续的检查点；请换一个输出文件夹"
                     "（或在额外参数中加入 \"overwrite_output_dir\": true）"),
    "running_predict": ("Predicting…", "预测中…"),
    "finished_predict": ("Finished. Predictions and scores in {output_dir}", "预测完成，预测结果与评分在 {output_dir}"),
    "aborted_predict": ("Stopped; the rows predicted so far and their scores are in {output_dir}",
                        "已停止；已完成的预测及其评分在 {output_dir}"),
    "predict_scores": ("BLEU-4 {bleu:.2f} · ROUGE-1 {rouge1:.2f} · ROUGE-2 {rouge2:.2f} · ROUGE-L {rougel:.2f} "
                       "({samples} rows, {speed:.1f} tokens/s)\npredictions: {predictions}\nscores: {scores}",
                       "BLEU-4 {bleu:.2f} · ROUGE-1 {rouge1:.2f} · ROUGE-2 {rouge2:.2f} · ROUGE-L {rougel:.2f}"
                       "（{samples} 条，{speed:.1f} tokens/s）\n预测结果：{predictions}\n评分：{scores}"),
    "starting_recall": ("Starting: reading the training questions and loading the model…",
                        "启动中：正在读取训练问题并加载模型…"),
    "running_recall": ("Asking the questions…", "提问中…"),
    "aborting_recall": ("Stopping the recall check…", "正在停止记忆检查…"),
    "finished_recall": ("Finished. Results in {output_dir}", "记忆检查完成，结果在 {output_dir}"),
    "aborted_recall": ("Stopped; a recall check writes its results only when it completes.",
                       "已停止；记忆检查只在完成时写入结果。"),
    "step_line_recall": ("{phase}: {current}/{total} questions · {percent:.0f}% of this part · elapsed {elapsed}",
                         "{phase}：{current}/{total} 个问题 · 本部分 {percent:.0f}% · 已用 {elapsed}"),
    "phase_recall": ("training questions", "训练问题"),
    "phase_held-out": ("held-out questions", "留出问题"),
    "phase_drift (base model)": ("drift, base model", "漂移：基础模型"),
    "phase_drift (fine-tuned)": ("drift, fine-tuned model", "漂移：微调后的模型"),
    "recall_summary": ("exact match {exact} · character similarity {similarity:.3f} · field accuracy {fields} · "
                       "held-out {heldout} · drift mean change {drift}",
                       "完全匹配 {exact} · 字符相似度 {similarity:.3f} · 字段准确率 {fields} · "
                       "留出问题 {heldout} · 漂移平均变化 {drift}"),
    "recall_no_fields": ("- (no key:value answers)", "-（没有 key:value 形式的答案）"),
    "recall_skipped": ("skipped ({reason})", "已跳过（{reason}）"),
    "recall_file": ("all numbers and answers: {path}", "全部数值与回答：{path}"),
    "step_line": ("step {current}/{total} · {percent:.0f}% · elapsed {elapsed} · remaining {remaining}{speed}",
                  "步数 {current}/{total} · {percent:.0f}% · 已用 {elapsed} · 剩余 {remaining}{speed}"),
})


def text(key: str, lang: str) -> str:
    """A label or message in `lang` (English when the key or language has no translation)."""
    pair = LABELS.get(key) or MESSAGES.get(key)
    if pair is None:
        raise KeyError(f"no UI string `{key}`")
    return pair[1] if lang == "zh" and pair[1] else pair[0]


def message(key: str, lang: str, **values) -> str:
    return text(key, lang).format(**values)
