variable "aws_region" {
  description = "AWS region to deploy into."
  type        = string
}

variable "environment" {
  description = "Environment name (e.g. \"prod\", \"staging\"); part of every resource name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,11}$", var.environment))
    error_message = "environment must be 1-12 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "public_hostname" {
  description = "Public DNS name clients use (e.g. \"chat.example.com\"), covered by the certificate. Used for the allowed WebSocket Origin and the outputs; point it at the ALB."
  type        = string
}

variable "extra_allowed_origins" {
  description = "Further exact Origin values (scheme://host[:port]) allowed to open WebSockets, besides https://<public_hostname>."
  type        = list(string)
  default     = []
}

variable "certificate_arn" {
  description = "ARN of the ACM certificate (same region) for public_hostname, served by the ALB's HTTPS listener."
  type        = string
}

variable "vpc_cidr" {
  description = "IPv4 CIDR of the VPC."
  type        = string
  default     = "10.40.0.0/16"
}

variable "az_count" {
  description = "Number of availability zones (2 or 3)."
  type        = number
  default     = 2
}

variable "single_nat_gateway" {
  description = "One shared NAT gateway instead of one per AZ (cheaper, less available)."
  type        = bool
  default     = false
}

variable "alb_ingress_cidrs" {
  description = "IPv4 CIDRs allowed to reach the ALB on 80/443."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "alb_idle_timeout" {
  description = "ALB idle timeout in seconds; must exceed the server's 25 s WebSocket ping interval."
  type        = number
  default     = 120
}

variable "deregistration_delay" {
  description = "Target group deregistration delay in seconds: longer than the node's 25 s drain plus its 2 s stop poll (the node drains as soon as ECS starts stopping the task; the ALB ends what is left when the delay runs out), at most stop_timeout."
  type        = number
  default     = 35

  validation {
    condition     = var.deregistration_delay <= var.stop_timeout
    error_message = "deregistration_delay must not exceed stop_timeout."
  }
}

variable "stop_timeout" {
  description = "ECS container stopTimeout in seconds (SIGTERM to SIGKILL); the server drains within 25 s; Fargate allows at most 120."
  type        = number
  default     = 45
}

variable "alb_deletion_protection" {
  description = "Protect the ALB against deletion."
  type        = bool
  default     = true
}

variable "image_tag" {
  description = "Image tag for the task definition Terraform registers (the deploy workflow takes over with git SHAs)."
  type        = string
  default     = "latest"
}

variable "task_cpu" {
  description = "Fargate task CPU units (1024 = 1 vCPU)."
  type        = number
  default     = 1024
}

variable "task_memory" {
  description = "Fargate task memory in MiB."
  type        = number
  default     = 2048
}

variable "desired_count" {
  description = "Initial number of tasks."
  type        = number
  default     = 2
}

variable "min_capacity" {
  description = "Minimum number of tasks (autoscaling)."
  type        = number
  default     = 2
}

variable "max_capacity" {
  description = "Maximum number of tasks (autoscaling)."
  type        = number
  default     = 10
}

variable "enable_execute_command" {
  description = "Allow ECS Exec into running tasks."
  type        = bool
  default     = false
}

variable "log_retention_days" {
  description = "CloudWatch log retention in days."
  type        = number
  default     = 30
}

variable "traces_enabled" {
  description = "Send chatty's sampled traces to AWS X-Ray through each task's ADOT sidecar."
  type        = bool
  default     = false
}

variable "trace_sample_ratio" {
  description = "Share of messages traced when traces_enabled (0 to 1)."
  type        = number
  default     = 0.01
}

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_engine_version" {
  description = "PostgreSQL major (or major.minor) version."
  type        = string
  default     = "16"
}

variable "db_multi_az" {
  description = "Run RDS with a Multi-AZ standby."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days of RDS automated backups (1-35)."
  type        = number
  default     = 14
}

variable "db_deletion_protection" {
  description = "Protect the RDS instance against deletion."
  type        = bool
  default     = true
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.small"
}

variable "redis_num_cache_clusters" {
  description = "Number of Redis nodes (2+ enables failover and Multi-AZ)."
  type        = number
  default     = 2
}

variable "github_repository" {
  description = "GitHub repository (\"owner/name\") whose deploy workflow may assume the deploy role."
  type        = string
}

variable "github_environment" {
  description = "GitHub Actions environment of the deploy job."
  type        = string
  default     = "production"
}

variable "create_github_oidc_provider" {
  description = "Create the GitHub OIDC identity provider (false if the account already has one; then set github_oidc_provider_arn)."
  type        = bool
  default     = true
}

variable "github_oidc_provider_arn" {
  description = "ARN of the existing GitHub OIDC provider when create_github_oidc_provider is false."
  type        = string
  default     = null
}

variable "alarm_email" {
  description = "Address that receives the CloudWatch alarms (through the SNS topic); empty for none."
  type        = string
  default     = ""
}
