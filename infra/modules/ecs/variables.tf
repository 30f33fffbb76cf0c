variable "name" {
  description = "Name of the ECS cluster, service and task definition family."
  type        = string
}

variable "aws_region" {
  description = "AWS region (for the awslogs driver)."
  type        = string
}

variable "image_repository_url" {
  description = "ECR repository URL of the chatty image (without tag)."
  type        = string
}

variable "ecr_repository_arn" {
  description = "ARN of the ECR repository: the execution role may pull from it only."
  type        = string
}

variable "image_tag" {
  description = "Image tag of the task definition Terraform registers. The deploy workflow registers later revisions with the pushed git SHA; the service ignores task definition drift."
  type        = string
  default     = "latest"
}

variable "cpu" {
  description = "Fargate task CPU units (1024 = 1 vCPU)."
  type        = number
  default     = 1024
}

variable "memory" {
  description = "Fargate task memory in MiB (must be a valid combination with cpu)."
  type        = number
  default     = 2048
}

variable "cpu_architecture" {
  description = "CPU architecture of the task (X86_64 or ARM64); must match the image the deploy workflow builds."
  type        = string
  default     = "X86_64"
}

variable "app_port" {
  description = "Public container port (server.port)."
  type        = number
  default     = 8080
}

variable "metrics_port" {
  description = "Metrics container port (server.metrics_port)."
  type        = number
  default     = 9090
}

variable "stop_timeout" {
  description = "Seconds ECS waits after SIGTERM before SIGKILL (container stopTimeout). The server drains within 25 s; Fargate allows at most 120."
  type        = number
  default     = 45

  validation {
    condition     = var.stop_timeout > 25 && var.stop_timeout <= 120
    error_message = "stop_timeout must exceed the 25 s drain and be at most 120 s (Fargate maximum)."
  }
}

variable "environment" {
  description = "Plain (non-secret) environment variables of the container, e.g. CHATTY__AUTH__ALLOWED_ORIGINS."
  type        = map(string)
  default     = {}
}

variable "secrets" {
  description = "Map of container environment variable name to Secrets Manager secret ARN (valueFrom)."
  type        = map(string)
}

variable "migration_secrets" {
  description = "Secrets only the one-off migration task definition gets (env name to ARN): the schema owner's database URL."
  type        = map(string)
  default     = {}
}

variable "subnet_ids" {
  description = "Private subnets the tasks run in."
  type        = list(string)
}

variable "security_group_id" {
  description = "Security group of the tasks (from the security module)."
  type        = string
}

variable "target_group_arn" {
  description = "ALB target group the service registers its tasks into."
  type        = string
}

variable "alb_arn_suffix" {
  description = "ARN suffix of the ALB, for the request-count and connection scaling metrics."
  type        = string
}

variable "target_group_arn_suffix" {
  description = "ARN suffix of the target group, for the request-count scaling metric."
  type        = string
}

variable "desired_count" {
  description = "Initial number of tasks (autoscaling owns it afterwards)."
  type        = number
  default     = 2
}

variable "min_capacity" {
  description = "Minimum number of tasks for autoscaling (at least 1)."
  type        = number
  default     = 2

  validation {
    condition     = var.min_capacity >= 1
    error_message = "min_capacity must be at least 1."
  }
}

variable "max_capacity" {
  description = "Maximum number of tasks for autoscaling."
  type        = number
  default     = 10
}

variable "cpu_target_percent" {
  description = "Target average CPU utilization (%) for autoscaling."
  type        = number
  default     = 60
}

variable "memory_target_percent" {
  description = "Target average memory utilization (%) for autoscaling."
  type        = number
  default     = 70
}

variable "requests_per_target" {
  description = "Target ALB requests per task per minute (ALBRequestCountPerTarget; WebSocket upgrades count as requests)."
  type        = number
  default     = 1000
}

variable "connections_per_task" {
  description = "Target ALB ActiveConnectionCount per running task. The metric counts client-side and target-side TCP connections, so it is about twice the open WebSockets per task. null disables this policy."
  type        = number
  default     = 10000
}

variable "scale_in_cooldown" {
  description = "Seconds between scale-in actions. Scale-in closes sockets (clients reconnect), so keep it long."
  type        = number
  default     = 300
}

variable "scale_out_cooldown" {
  description = "Seconds between scale-out actions."
  type        = number
  default     = 60
}

variable "health_check_grace_period" {
  description = "Seconds the service ignores failing ALB health checks after a task starts (migrations run at start)."
  type        = number
  default     = 60
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log group."
  type        = number
  default     = 30
}

variable "log_kms_key_arn" {
  description = "KMS key for the CloudWatch log group. null uses CloudWatch's default encryption."
  type        = string
  default     = null
}

variable "secrets_kms_key_arn" {
  description = "Customer-managed KMS key of the secrets, if any: the execution role then gets kms:Decrypt on it."
  type        = string
  default     = null
}

variable "readonly_root_filesystem" {
  description = "Mount the container's root filesystem read-only (the server logs to stdout and keeps no local files in production)."
  type        = bool
  default     = true
}

variable "nofile_limit" {
  description = "Open file limit (soft and hard) of the container: one descriptor per socket plus pools."
  type        = number
  default     = 65536
}

variable "enable_execute_command" {
  description = "Allow ECS Exec into running tasks (grants the task role the SSM messages permissions)."
  type        = bool
  default     = false
}

variable "container_insights" {
  description = "Container Insights mode of the cluster (\"enabled\" or \"enhanced\"); the connections scaling policy needs its RunningTaskCount metric."
  type        = string
  default     = "enabled"
}

variable "tags" {
  description = "Tags added to every resource of this module."
  type        = map(string)
  default     = {}
}

variable "metrics_remote_write_url" {
  description = "Amazon Managed Prometheus remote-write URL; set, each task runs an ADOT collector sidecar that scrapes chatty's /metrics and sends them there. null: no sidecar."
  type        = string
  default     = null
}

variable "metrics_workspace_arn" {
  description = "ARN of the Prometheus workspace behind metrics_remote_write_url (the task role may only write there)."
  type        = string
  default     = null

  validation {
    condition     = (var.metrics_workspace_arn == null) == (var.metrics_remote_write_url == null)
    error_message = "metrics_workspace_arn and metrics_remote_write_url are set together."
  }
}

variable "adot_image" {
  description = "AWS Distro for OpenTelemetry collector image of the sidecar (metrics and traces)."
  type        = string
  default     = "public.ecr.aws/aws-observability/aws-otel-collector:v0.43.1"
}

variable "traces_enabled" {
  description = "Send chatty's sampled traces to AWS X-Ray: the ADOT sidecar (run also without metrics) receives them over OTLP/HTTP on the task's loopback, and the task role may write to X-Ray."
  type        = bool
  default     = false
}

variable "trace_sample_ratio" {
  description = "Share of messages traced when traces_enabled (CHATTY__TELEMETRY__SAMPLE_RATIO), 0 to 1. A caller's sampled traceparent is always followed."
  type        = number
  default     = 0.01

  validation {
    condition     = var.trace_sample_ratio >= 0 && var.trace_sample_ratio <= 1
    error_message = "trace_sample_ratio must be between 0 and 1."
  }
}
