# ECS Fargate: cluster, task definition, service behind the ALB, autoscaling.
#
# Stop sequence of a task (deploy or scale-in): ECS deregisters it from the target group and
# waits for the target group's deregistration delay (the ALB sends no new sockets its way and
# ends every socket still open when the delay runs out), then sends SIGTERM and waits up to
# stopTimeout, then SIGKILL. Chatty does not wait for the signal: it polls the task metadata
# endpoint (server.ecs_stop_poll_ms, src/ecs.rs) and drains as soon as the task's desired
# status is STOPPED (/readyz 503, sockets closed with 1001, writer flushed, exit 0 within
# 25 s), so the deregistration delay must exceed poll + drain (infra/tests checks it).

data "aws_caller_identity" "current" {}

locals {
  container_name      = "chatty"
  adot_container_name = "adot-collector"
  log_group_name      = "/ecs/${var.name}"

  metrics_enabled = var.metrics_remote_write_url != null
  # One ADOT sidecar serves both signals: it runs when either is on.
  adot_enabled = local.metrics_enabled || var.traces_enabled
  # OTLP/HTTP port of the sidecar's receiver, on the task's loopback (awsvpc: the containers
  # of a task share one network namespace).
  otlp_http_port = 4318

  environment = merge(
    {
      CHATTY_ENVIRONMENT   = "production"
      CHATTY__SERVER__HOST = "0.0.0.0"
      # The serving role cannot change the schema: migrations run before, as their own task.
      CHATTY__DATABASE__MIGRATE_ON_START = "false"
    },
    local.trace_environment,
    var.environment,
  )

  # Traces on: chatty exports its sampled spans to the sidecar. Empty when off, so the
  # container's environment is exactly what it was without the option.
  trace_environment = var.traces_enabled ? {
    CHATTY__TELEMETRY__OTLP_ENDPOINT = "http://localhost:${local.otlp_http_port}"
    CHATTY__TELEMETRY__SAMPLE_RATIO  = tostring(var.trace_sample_ratio)
  } : {}

  container_definition = {
    name        = local.container_name
    image       = "${var.image_repository_url}:${var.image_tag}"
    essential   = true
    stopTimeout = var.stop_timeout

    portMappings = [
      { name = "http", containerPort = var.app_port, protocol = "tcp" },
      { name = "metrics", containerPort = var.metrics_port, protocol = "tcp" },
    ]

    environment = [for k in sort(keys(local.environment)) : { name = k, value = local.environment[k] }]
    secrets     = [for k in sort(keys(var.secrets)) : { name = k, valueFrom = var.secrets[k] }]

    # `chatty healthcheck` exits 0 only when GET /readyz on 127.0.0.1:app_port answers 200.
    healthCheck = {
      command     = ["CMD", "chatty", "healthcheck"]
      interval    = 15
      timeout     = 5
      retries     = 3
      startPeriod = 30
    }

    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = local.log_group_name
        awslogs-region        = var.aws_region
        awslogs-stream-prefix = local.container_name
        # A slow CloudWatch API must never block the server's stdout.
        mode            = "non-blocking"
        max-buffer-size = "8m"
      }
    }

    readonlyRootFilesystem = var.readonly_root_filesystem
    linuxParameters = {
      initProcessEnabled = true
    }
    ulimits = [
      { name = "nofile", softLimit = var.nofile_limit, hardLimit = var.nofile_limit },
    ]
  }

  # Traces on: chatty starts after the collector has started (START), so the first spans find
  # it. Never HEALTHY: chat must not wait on tracing (and the sidecar is not essential). No
  # dependsOn at all when off, so the task definition stays the same.
  chatty_container = merge(local.container_definition, var.traces_enabled ? {
    dependsOn = [{ containerName = local.adot_container_name, condition = "START" }]
  } : {})

  # Metrics on AWS: an ADOT collector beside chatty scrapes its /metrics over the task's
  # loopback every 15 s and remote-writes to Amazon Managed Prometheus with SigV4 (the task
  # role may aps:RemoteWrite to that one workspace). The ECS resource detector labels every
  # series with the task, so tasks never overwrite each other's series. Off when no
  # remote-write URL is given.
  adot_metrics = {
    extensions = { sigv4auth = { region = var.aws_region, service = "aps" } }
    receivers = {
      prometheus = {
        config = {
          scrape_configs = [{
            job_name        = "chatty"
            scrape_interval = "15s"
            static_configs  = [{ targets = ["127.0.0.1:${var.metrics_port}"] }]
          }]
        }
      }
    }
    processors = {
      "resourcedetection/ecs" = { detectors = ["env", "ecs"], timeout = "5s", override = false }
      batch                   = {}
    }
    exporters = {
      prometheusremotewrite = {
        endpoint                         = coalesce(var.metrics_remote_write_url, "unused")
        auth                             = { authenticator = "sigv4auth" }
        resource_to_telemetry_conversion = { enabled = true }
      }
    }
    pipelines = {
      metrics = {
        receivers  = ["prometheus"]
        processors = ["resourcedetection/ecs", "batch"]
        exporters  = ["prometheusremotewrite"]
      }
    }
  }

  # Traces on AWS (traces_enabled): the same sidecar receives chatty's spans over OTLP/HTTP on
  # the task's loopback only and sends them to X-Ray (the task role may write segments).
  # X-Ray takes chatty's random W3C trace ids: the exporter's timestamp check is off by
  # default (feature gate exporter.awsxray.skiptimestampvalidation).
  adot_traces = {
    extensions = {}
    receivers = {
      otlp = { protocols = { http = { endpoint = "127.0.0.1:${local.otlp_http_port}" } } }
    }
    processors = { batch = {} }
    exporters  = { awsxray = { region = var.aws_region } }
    pipelines = {
      traces = {
        receivers  = ["otlp"]
        processors = ["batch"]
        exporters  = ["awsxray"]
      }
    }
  }

  # The sidecar's configuration: the parts that are on, merged. With metrics alone it is
  # exactly the metrics configuration above. (A for expression keeps each part's own types;
  # a conditional between the two objects would have to unify them.)
  adot_signals = { metrics = local.metrics_enabled, traces = var.traces_enabled }
  adot_parts = [
    for name, part in { metrics = local.adot_metrics, traces = local.adot_traces } : part
    if local.adot_signals[name]
  ]
  adot_extensions = merge({}, [for p in local.adot_parts : p.extensions]...)
  adot_config = yamlencode({
    extensions = local.adot_extensions
    receivers  = merge({}, [for p in local.adot_parts : p.receivers]...)
    processors = merge({}, [for p in local.adot_parts : p.processors]...)
    exporters  = merge({}, [for p in local.adot_parts : p.exporters]...)
    service = {
      extensions = keys(local.adot_extensions)
      pipelines  = merge({}, [for p in local.adot_parts : p.pipelines]...)
    }
  })

  sidecars = local.adot_enabled ? [{
    name              = local.adot_container_name
    image             = var.adot_image
    essential         = false
    memoryReservation = 64
    environment       = [{ name = "AOT_CONFIG_CONTENT", value = local.adot_config }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = local.log_group_name
        awslogs-region        = var.aws_region
        awslogs-stream-prefix = "adot"
        mode                  = "non-blocking"
        max-buffer-size       = "1m"
      }
    }
  }] : []

  # `chatty migrate` as a one-off task (the deploy workflow runs it before rolling the
  # service): the same image and settings, plus the schema owner's URL, which the serving
  # task definition never carries. It applies the migrations as the owner, then grants the
  # application role of CHATTY__DATABASE__URL row access (see src/store/roles.rs).
  migrate_container_definition = {
    name        = local.container_name
    image       = "${var.image_repository_url}:${var.image_tag}"
    essential   = true
    command     = ["migrate"]
    environment = [for k in sort(keys(local.environment)) : { name = k, value = local.environment[k] }]
    secrets = [
      for k in sort(keys(merge(var.secrets, var.migration_secrets))) :
      { name = k, valueFrom = merge(var.secrets, var.migration_secrets)[k] }
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = local.log_group_name
        awslogs-region        = var.aws_region
        awslogs-stream-prefix = "migrate"
      }
    }
    readonlyRootFilesystem = var.readonly_root_filesystem
  }
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = var.container_insights
  }

  tags = var.tags
}

resource "aws_cloudwatch_log_group" "this" {
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn

  tags = var.tags
}

# --- IAM ------------------------------------------------------------------------------------

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

# Execution role: used by the ECS agent to pull the image, write logs and read the secrets.
resource "aws_iam_role" "execution" {
  name_prefix        = "${substr(var.name, 0, 20)}-exec-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json

  tags = var.tags
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "EcrAuth"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource-level permissions
  }

  statement {
    sid = "EcrPull"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [var.ecr_repository_arn]
  }

  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this.arn}:*"]
  }

  statement {
    sid       = "Secrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = concat(values(var.secrets), values(var.migration_secrets))
  }

  dynamic "statement" {
    for_each = var.secrets_kms_key_arn == null ? [] : [var.secrets_kms_key_arn]
    content {
      sid       = "SecretsKms"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "pull-logs-secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# Task role: what the containers of the task may call. Chatty itself needs no AWS API; ECS
# Exec (when enabled) needs the SSM message channels, the ADOT sidecar the Prometheus
# workspace (metrics) and X-Ray (traces).
resource "aws_iam_role" "task" {
  name_prefix        = "${substr(var.name, 0, 20)}-task-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json

  tags = var.tags
}

data "aws_iam_policy_document" "exec_command" {
  statement {
    actions = [
      "ssmmessages:CreateControlChannel",
      "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel",
      "ssmmessages:OpenDataChannel",
    ]
    resources = ["*"] # ssmmessages has no resource-level permissions
  }
}

data "aws_iam_policy_document" "remote_write" {
  count = var.metrics_remote_write_url == null ? 0 : 1

  statement {
    actions   = ["aps:RemoteWrite"]
    resources = [var.metrics_workspace_arn]
  }
}

resource "aws_iam_role_policy" "remote_write" {
  count = var.metrics_remote_write_url == null ? 0 : 1

  name   = "prometheus-remote-write"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.remote_write[0].json
}

# X-Ray's write and sampling actions take no resource ARN.
data "aws_iam_policy_document" "xray" {
  count = var.traces_enabled ? 1 : 0

  statement {
    actions = [
      "xray:PutTraceSegments",
      "xray:PutTelemetryRecords",
      "xray:GetSamplingRules",
      "xray:GetSamplingTargets",
      "xray:GetSamplingStatisticsSummary",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "xray" {
  count = var.traces_enabled ? 1 : 0

  name   = "xray-write"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.xray[0].json
}

resource "aws_iam_role_policy" "exec_command" {
  count = var.enable_execute_command ? 1 : 0

  name   = "ecs-exec"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.exec_command.json
}

# --- Task definition and service ------------------------------------------------------------

resource "aws_ecs_task_definition" "this" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  container_definitions = jsonencode(concat([local.chatty_container], local.sidecars))

  tags = var.tags
}

resource "aws_ecs_task_definition" "migrate" {
  family                   = "${var.name}-migrate"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  container_definitions = jsonencode([local.migrate_container_definition])

  tags = var.tags
}

resource "aws_ecs_service" "this" {
  name             = var.name
  cluster          = aws_ecs_cluster.this.id
  task_definition  = aws_ecs_task_definition.this.arn
  desired_count    = var.desired_count
  launch_type      = "FARGATE"
  platform_version = "LATEST"

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = var.health_check_grace_period
  enable_execute_command             = var.enable_execute_command
  enable_ecs_managed_tags            = true
  propagate_tags                     = "SERVICE"
  wait_for_steady_state              = false

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [var.security_group_id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = var.target_group_arn
    container_name   = local.container_name
    container_port   = var.app_port
  }

  tags = var.tags

  lifecycle {
    # The deploy workflow registers new task definition revisions (new image) and autoscaling
    # owns the task count: Terraform must not roll either back.
    ignore_changes = [task_definition, desired_count]
  }
}

# --- Autoscaling ----------------------------------------------------------------------------

resource "aws_appautoscaling_target" "this" {
  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.this.name}"
  min_capacity       = var.min_capacity
  max_capacity       = var.max_capacity
}

resource "aws_appautoscaling_policy" "cpu" {
  name               = "${var.name}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension
  resource_id        = aws_appautoscaling_target.this.resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = var.cpu_target_percent
    scale_in_cooldown  = var.scale_in_cooldown
    scale_out_cooldown = var.scale_out_cooldown

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "memory" {
  name               = "${var.name}-memory"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension
  resource_id        = aws_appautoscaling_target.this.resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = var.memory_target_percent
    scale_in_cooldown  = var.scale_in_cooldown
    scale_out_cooldown = var.scale_out_cooldown

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageMemoryUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "requests" {
  name               = "${var.name}-alb-requests"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension
  resource_id        = aws_appautoscaling_target.this.resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = var.requests_per_target
    scale_in_cooldown  = var.scale_in_cooldown
    scale_out_cooldown = var.scale_out_cooldown

    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${var.alb_arn_suffix}/${var.target_group_arn_suffix}"
    }
  }
}

# Long-lived WebSockets barely move the request count: track open connections per task
# (ALB ActiveConnectionCount / running tasks of the service). min_capacity >= 1 keeps the
# divisor positive.
resource "aws_appautoscaling_policy" "connections" {
  count = var.connections_per_task == null ? 0 : 1

  name               = "${var.name}-connections"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension
  resource_id        = aws_appautoscaling_target.this.resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = var.connections_per_task
    scale_in_cooldown  = var.scale_in_cooldown
    scale_out_cooldown = var.scale_out_cooldown

    customized_metric_specification {
      metrics {
        id          = "connections"
        label       = "ALB active connections"
        return_data = false

        metric_stat {
          stat = "Sum"

          metric {
            namespace   = "AWS/ApplicationELB"
            metric_name = "ActiveConnectionCount"

            dimensions {
              name  = "LoadBalancer"
              value = var.alb_arn_suffix
            }
          }
        }
      }

      metrics {
        id          = "tasks"
        label       = "Running tasks"
        return_data = false

        metric_stat {
          stat = "Average"

          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "RunningTaskCount"

            dimensions {
              name  = "ClusterName"
              value = aws_ecs_cluster.this.name
            }

            dimensions {
              name  = "ServiceName"
              value = aws_ecs_service.this.name
            }
          }
        }
      }

      metrics {
        id          = "per_task"
        label       = "Active connections per task"
        expression  = "connections / tasks"
        return_data = true
      }
    }
  }
}
